/**
 * TOTP secrets at rest: sealed with SECRETS_KEY (src/security/secrets.ts) when one is set, opened
 * only to check a code, to show an enrolment in progress, or for `user export --with-hashes`.
 */
import type { Connection } from 'mongoose';
import type { SecretBox } from '../security/secrets.ts';
import { accountModel } from './model.ts';

const TOTP_PURPOSE = 'totp-secret';

/** A TOTP secret as stored: sealed with SECRETS_KEY (src/security/secrets.ts) when one is set. */
export function sealTotpSecret(secrets: SecretBox, secret: string): string {
  return secrets.seal(secret, TOTP_PURPOSE);
}

export function openTotpSecret(secrets: SecretBox, stored: string): string {
  return secrets.open(stored, TOTP_PURPOSE);
}

/**
 * Seals every TOTP secret (enabled or being enrolled) stored in the clear or under an older
 * SECRETS_KEY with the first one (`keys reseal`); returns how many changed. Each write is tied to
 * the value it read, so a secret changed meanwhile is left to its new owner.
 */
export async function resealTotpSecrets(connection: Connection, secrets: SecretBox): Promise<number> {
  const accounts = accountModel(connection);
  let changed = 0;
  for await (const record of accounts.find({ $or: [{ mfa: { $exists: true } }, { mfaPending: { $exists: true } }] }, { mfa: 1, mfaPending: 1 }).lean().cursor()) {
    for (const path of ['mfa', 'mfaPending'] as const) {
      const stored = record[path]?.secret;
      if (!stored || !secrets.needsReseal(stored)) continue;
      const sealed = sealTotpSecret(secrets, openTotpSecret(secrets, stored));
      const { modifiedCount } = await accounts.updateOne({ _id: record._id, [`${path}.secret`]: stored }, { $set: { [`${path}.secret`]: sealed } }, { timestamps: false });
      changed += modifiedCount;
    }
  }
  return changed;
}
