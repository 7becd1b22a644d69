/**
 * TOTP second factor (issue 4): enrolment, sign-in verification, recovery codes, disabling.
 *
 * Flow for the pages: `isEnabled` tells whether to ask for a code after the password; enrolment is
 * `beginEnrolment` (show the QR code and the secret), then `confirmEnrolment` with a code from the
 * app (show the returned recovery codes once: only their hashes are kept). At sign-in,
 * `verifySignIn` takes either a TOTP code or a recovery code.
 *
 * Single use is decided by inserting a marker with a unique `_id` into `mfa_used`
 * (`<account>:totp:<step>`, `<account>:recovery:<hash>`), the duplicate-key error meaning "already
 * used". Such an insert is atomic on MongoDB and on FerretDB v1 alike, whereas FerretDB runs a
 * conditional update as a read and then a write by `_id`, so a `$pull` or a `lastStep < step`
 * filter would let two concurrent requests both succeed. For the same reason verification never
 * writes the account document: a concurrent update of it (a password reset, say) could be lost.
 *
 * Callers limit attempts (the `mfaPerAccount` rate limit and a lockout of their own, see
 * src/interactions/routes.ts): a guess at a six-digit code wins with probability 2 in 10^6, since
 * two time steps are accepted.
 */
import { SecretBox } from '../security/secrets.ts';
import { openTotpSecret, sealTotpSecret } from './totp-secrets.ts';
import { createHash, randomInt, timingSafeEqual } from 'node:crypto';
import type { Collection, Connection } from 'mongoose';
import { generate, generateSecret, generateURI, verify } from 'otplib';
import QRCode from 'qrcode';
import { AppError } from '../http/errors.ts';
import { accountModel, type AccountMfa, type AccountModel } from './model.ts';
import type { AccountService } from './service.ts';

const PERIOD_SECONDS = 30;
const PENDING_MS = 15 * 60_000;
/** A step is accepted during itself and the next one; the rest is room for clock skew between instances. */
const TOTP_MARKER_MS = 5 * 60_000;
/**
 * Markers of a replaced recovery set outlive it a little: a sign-in that read the old set just
 * before it was replaced must still find its code used.
 */
const RETIRED_MARKER_MS = 5 * 60_000;
const RECOVERY_CODE_COUNT = 10;
/** Base32 (5 bits a character), lower case; 10 characters make 50 bits. */
const RECOVERY_ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
const RECOVERY_CODE = /^[a-z2-7]{10}$/;
const TOTP_CODE = /^\d{6}$/;
const DUPLICATE_KEY = 11000;

export type MfaErrorCode =
  | 'account_not_found'
  | 'mfa_already_enabled'
  | 'mfa_not_enabled'
  | 'mfa_enrolment_expired'
  | 'mfa_invalid_code'
  | 'mfa_invalid_password';

const ERRORS: Record<MfaErrorCode, [status: number, message: string]> = {
  account_not_found: [404, 'no such account'],
  mfa_already_enabled: [409, 'two-step verification is already on'],
  mfa_not_enabled: [409, 'two-step verification is not on'],
  mfa_enrolment_expired: [400, 'the setup has expired; please start again'],
  mfa_invalid_code: [400, 'the code is not valid'],
  mfa_invalid_password: [400, 'the password is not correct'],
};

/** Every failure the pages are expected to handle; switch on `code`. */
export class MfaError extends AppError {
  declare readonly code: MfaErrorCode;

  constructor(code: MfaErrorCode) {
    const [status, message] = ERRORS[code];
    super(code, message, status);
    this.name = 'MfaError';
  }
}

export interface MfaStatus {
  enabled: boolean;
  recoveryCodesLeft: number;
}

export interface Enrolment {
  /** Base32, for typing into an app that cannot scan. */
  secret: string;
  otpauthUri: string;
  /** The otpauth URI as a PNG `data:` URL, for an <img>. */
  qrCodeDataUrl: string;
  /** After this, confirmEnrolment refuses and enrolment starts again. */
  expiresAt: Date;
}

export type SignInFactor = 'otp' | 'recovery';

export interface MfaOptions {
  /** Shown by authenticator apps beside the account (e.g. the issuer's host name); no ':'. */
  issuer: string;
  /** Seals TOTP secrets at rest (SECRETS_KEY); without keys they are stored as they are. */
  secrets?: SecretBox;
  /** Milliseconds since the epoch; tests move it instead of waiting for time steps. */
  now?: () => number;
}

interface UsedMarker {
  _id: string;
  accountId: string;
  kind: 'totp' | 'recovery';
  /** null: kept while its recovery code set is current. */
  expiresAt: Date | null;
}

/**
 * A TOTP secret brought by `user import` (base32, any case, spaces and padding ignored), as stored,
 * or why it is refused: it must decode cleanly to at least 128 bits (RFC 4226's minimum, which
 * otplib enforces), so that sign-in can use it.
 */
export async function checkTotpSecret(input: string): Promise<{ secret: string } | { problem: string }> {
  const secret = input.replace(/[\s=]/g, '').toUpperCase();
  if (!/^[A-Z2-7]{26,128}$/.test(secret)) return { problem: 'totp_secret must be base32 of at least 128 bits (26 characters)' };
  try {
    await generate({ secret });
    return { secret };
  } catch {
    return { problem: 'totp_secret is not valid base32 of at least 128 bits' };
  }
}

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === DUPLICATE_KEY;
}

/** Salted with the account id, so one precomputed table cannot serve every account. */
function recoveryHash(accountId: string, normalizedCode: string): string {
  return createHash('sha256').update(`${accountId}:${normalizedCode}`).digest('hex');
}

function recoveryMarkerId(accountId: string, hash: string): string {
  return `${accountId}:recovery:${hash}`;
}

function newRecoveryCodes(): string[] {
  return Array.from({ length: RECOVERY_CODE_COUNT }, () => {
    const chars = Array.from({ length: 10 }, () => RECOVERY_ALPHABET.charAt(randomInt(RECOVERY_ALPHABET.length)));
    return `${chars.slice(0, 5).join('')}-${chars.slice(5).join('')}`;
  });
}

/** What users may type for a recovery code: any case, with or without the dash and spaces. */
function normalizeRecoveryCode(code: string): string {
  return code.replace(/[\s-]/g, '').toLowerCase();
}

export class MfaService {
  private readonly accounts: AccountModel;
  private readonly used: Collection<UsedMarker>;
  /** Sign-ins waiting for a second step (src/interactions/mfa-challenges.ts), ended by a reset. */
  private readonly challenges: Collection<{ _id: string; accountId: string }>;
  private readonly passwords: Pick<AccountService, 'authenticate'>;
  private readonly issuer: string;
  private readonly now: () => number;
  private readonly secrets: SecretBox;

  /** passwords: checks the account password before MFA is turned off. */
  constructor(connection: Connection, passwords: Pick<AccountService, 'authenticate'>, options: MfaOptions) {
    // otpauth labels are "issuer:account"; another colon makes apps misread them.
    if (options.issuer.includes(':')) throw new Error(`MFA issuer label must not contain ':' (got "${options.issuer}")`);
    this.accounts = accountModel(connection);
    this.used = connection.collection<UsedMarker>('mfa_used');
    this.challenges = connection.collection('mfa_challenges');
    this.passwords = passwords;
    this.issuer = options.issuer;
    this.now = options.now ?? Date.now;
    this.secrets = options.secrets ?? new SecretBox(undefined);
  }

  async ensureIndexes(): Promise<void> {
    await this.used.createIndex({ accountId: 1, expiresAt: 1 });
  }

  async status(accountId: string): Promise<MfaStatus> {
    const record = await this.accounts.findById(accountId, { mfa: 1 }).lean();
    if (!record?.mfa) return { enabled: false, recoveryCodesLeft: 0 };
    const { recoveryCodeHashes } = record.mfa;
    // One lookup by _id per code: FerretDB serves those from its index, but scans for $in.
    const used = await Promise.all(recoveryCodeHashes.map((h) => this.used.findOne({ _id: recoveryMarkerId(accountId, h) }, { projection: { _id: 1 } })));
    return { enabled: true, recoveryCodesLeft: used.filter((marker) => marker === null).length };
  }

  /** Whether sign-in needs the second step: one read of the account, on every password sign-in. */
  async isEnabled(accountId: string): Promise<boolean> {
    const record = await this.accounts.findById(accountId, { 'mfa.enabledAt': 1 }).lean();
    return Boolean(record?.mfa);
  }

  /**
   * Deletes expired TOTP step markers; run periodically (FerretDB has no TTL indexes), not per
   * sign-in, since on FerretDB a delete by anything but _id scans the collection.
   */
  async sweep(): Promise<void> {
    await this.used.deleteMany({ expiresAt: { $lte: new Date(this.now()) } });
  }

  /**
   * The enrolment in progress (the secret the user may already have scanned), if it has not
   * expired; a mistyped confirmation code must not swap it for a new one.
   */
  async pendingEnrolment(accountId: string, accountEmail: string): Promise<Enrolment | undefined> {
    const record = await this.accounts.findById(accountId, { mfa: 1, mfaPending: 1 }).lean();
    const pending = record && !record.mfa ? record.mfaPending : undefined;
    if (!pending || pending.expiresAt.getTime() <= this.now()) return undefined;
    const secret = openTotpSecret(this.secrets, pending.secret);
    const otpauthUri = generateURI({ issuer: this.issuer, label: accountEmail, secret });
    return { secret, otpauthUri, qrCodeDataUrl: await QRCode.toDataURL(otpauthUri), expiresAt: pending.expiresAt };
  }

  /** Starts (or restarts) enrolment with a new secret, inactive until confirmEnrolment. */
  async beginEnrolment(accountId: string, accountEmail: string): Promise<Enrolment> {
    const record = await this.accounts.findById(accountId, { mfa: 1 }).lean();
    if (!record) throw new MfaError('account_not_found');
    if (record.mfa) throw new MfaError('mfa_already_enabled');
    const secret = generateSecret();
    const expiresAt = new Date(this.now() + PENDING_MS);
    // MFA state is not profile information: leave `updatedAt` (the updated_at claim) alone.
    await this.accounts.updateOne({ _id: accountId }, { $set: { mfaPending: { secret: sealTotpSecret(this.secrets, secret), expiresAt } } }, { timestamps: false });
    const otpauthUri = generateURI({ issuer: this.issuer, label: accountEmail, secret });
    return { secret, otpauthUri, qrCodeDataUrl: await QRCode.toDataURL(otpauthUri), expiresAt };
  }

  /**
   * Turns MFA on when `code` matches the pending secret, and returns the recovery codes in clear:
   * the only time they exist outside the user's hands. The code's time step counts as used, so
   * the same code cannot then pass a sign-in.
   */
  async confirmEnrolment(accountId: string, code: string): Promise<string[]> {
    const record = await this.accounts.findById(accountId, { mfa: 1, mfaPending: 1 }).lean();
    if (!record) throw new MfaError('account_not_found');
    if (record.mfa) throw new MfaError('mfa_already_enabled');
    const pending = record.mfaPending;
    if (!pending || pending.expiresAt.getTime() <= this.now()) throw new MfaError('mfa_enrolment_expired');
    if (!(await this.useTotp(accountId, pending.secret, code))) throw new MfaError('mfa_invalid_code');
    const codes = newRecoveryCodes();
    const mfa: AccountMfa = {
      secret: pending.secret,
      enabledAt: new Date(this.now()),
      recoveryCodeHashes: codes.map((c) => recoveryHash(accountId, normalizeRecoveryCode(c))),
    };
    // Tied to the secret the user confirmed: a restarted enrolment in another tab has replaced it.
    const { matchedCount } = await this.accounts.updateOne(
      { _id: accountId, 'mfaPending.secret': pending.secret },
      { $set: { mfa }, $unset: { mfaPending: 1 } },
      { timestamps: false },
    );
    if (matchedCount !== 1) throw new MfaError('mfa_enrolment_expired');
    return codes;
  }

  /**
   * The second step of sign-in: a TOTP code of the current or previous 30-second step, or an
   * unused recovery code, each accepted once. Undefined for anything else, including accounts
   * without MFA (ask `status` first).
   */
  async verifySignIn(accountId: string, code: string): Promise<SignInFactor | undefined> {
    const record = await this.accounts.findById(accountId, { mfa: 1 }).lean();
    if (!record?.mfa) return undefined;
    if (await this.useTotp(accountId, record.mfa.secret, code)) return 'otp';
    if (await this.useRecoveryCode(accountId, record.mfa.recoveryCodeHashes, code)) return 'recovery';
    return undefined;
  }

  /** Replaces the recovery codes: the old ones, used or not, stop working. */
  async regenerateRecoveryCodes(accountId: string): Promise<string[]> {
    const record = await this.accounts.findById(accountId, { mfa: 1 }).lean();
    if (!record) throw new MfaError('account_not_found');
    if (!record.mfa) throw new MfaError('mfa_not_enabled');
    const codes = newRecoveryCodes();
    const hashes = codes.map((c) => recoveryHash(accountId, normalizeRecoveryCode(c)));
    // Matching the secret keeps a concurrent disable from being undone by a half `mfa` object.
    const { matchedCount } = await this.accounts.updateOne(
      { _id: accountId, 'mfa.secret': record.mfa.secret },
      { $set: { 'mfa.recoveryCodeHashes': hashes } },
      { timestamps: false },
    );
    if (matchedCount !== 1) throw new MfaError('mfa_not_enabled');
    await this.retireRecoveryMarkers(accountId);
    return codes;
  }

  /**
   * Turns MFA off. Needs the password and a TOTP code (a recovery code is refused: losing the
   * phone is what recovery codes are for, not switching the protection off). The password is
   * checked first so that a wrong one does not use up the code.
   */
  async disable(accountId: string, password: string, code: string): Promise<void> {
    const record = await this.accounts.findById(accountId, { email: 1, mfa: 1 }).lean();
    if (!record) throw new MfaError('account_not_found');
    if (!record.mfa) throw new MfaError('mfa_not_enabled');
    if ((await this.passwords.authenticate(record.email, password)) !== accountId) throw new MfaError('mfa_invalid_password');
    if (!(await this.useTotp(accountId, record.mfa.secret, code))) throw new MfaError('mfa_invalid_code');
    await this.accounts.updateOne(
      { _id: accountId, 'mfa.secret': record.mfa.secret },
      { $unset: { mfa: 1, mfaPending: 1 } },
      { timestamps: false },
    );
    await this.retireRecoveryMarkers(accountId);
  }

  /**
   * An administrator's reset (`user reset-mfa`, for a lost phone): two-step verification off, its
   * secret, recovery codes and any enrolment in progress gone, and the sign-ins waiting for a
   * second step of this account ended. Returns whether it was on. On FerretDB the challenges are
   * found by a scan: they are few and short-lived.
   */
  async reset(accountId: string): Promise<boolean> {
    const record = await this.accounts.findById(accountId, { mfa: 1 }).lean();
    if (!record) throw new MfaError('account_not_found');
    await this.accounts.updateOne({ _id: accountId }, { $unset: { mfa: 1, mfaPending: 1 } }, { timestamps: false });
    await this.retireRecoveryMarkers(accountId);
    await this.challenges.deleteMany({ accountId });
    return Boolean(record.mfa);
  }

  /** Everything two-step verification keeps for an account that is being erased (erase.ts). */
  async erase(accountId: string): Promise<void> {
    await this.accounts.updateOne({ _id: accountId }, { $unset: { mfa: 1, mfaPending: 1 } }, { timestamps: false });
    await Promise.all([this.used.deleteMany({ accountId }), this.challenges.deleteMany({ accountId })]);
  }

  /**
   * True when `code` is valid for the current or previous step and that step was not used yet.
   * `stored` is the secret as stored (sealed when SECRETS_KEY is set); filters compare that form.
   */
  private async useTotp(accountId: string, stored: string, code: string): Promise<boolean> {
    const secret = openTotpSecret(this.secrets, stored);
    const token = code.replace(/\s/g, '');
    // otplib throws on malformed tokens; to the user that is just a wrong code.
    if (!TOTP_CODE.test(token)) return false;
    const epoch = this.now() / 1000;
    const result = await verify({ secret, token, epoch, epochTolerance: [PERIOD_SECONDS, 0] });
    if (!result.valid) return false;
    // `delta` (not `timeStep`) because otplib's result type is shared with HOTP.
    const step = Math.floor(epoch / PERIOD_SECONDS) + result.delta;
    const fresh = await this.mark({
      _id: `${accountId}:totp:${step}`,
      accountId,
      kind: 'totp',
      expiresAt: new Date(step * PERIOD_SECONDS * 1000 + TOTP_MARKER_MS),
    });
    return fresh;
  }

  private async useRecoveryCode(accountId: string, hashes: readonly string[], code: string): Promise<boolean> {
    const normalized = normalizeRecoveryCode(code);
    if (!RECOVERY_CODE.test(normalized)) return false;
    const candidate = Buffer.from(recoveryHash(accountId, normalized), 'hex');
    // Compared with every stored hash, without stopping at a match.
    let match: string | undefined;
    for (const hash of hashes) if (timingSafeEqual(Buffer.from(hash, 'hex'), candidate)) match = hash;
    if (match === undefined) return false;
    return this.mark({ _id: recoveryMarkerId(accountId, match), accountId, kind: 'recovery', expiresAt: null });
  }

  /** False when the marker exists already, i.e. the code or time step was used. */
  private async mark(marker: UsedMarker): Promise<boolean> {
    try {
      await this.used.insertOne(marker);
      return true;
    } catch (error) {
      if (isDuplicateKey(error)) return false;
      throw error;
    }
  }

  /** Lets the used-code markers of a replaced or removed recovery set expire. */
  private async retireRecoveryMarkers(accountId: string): Promise<void> {
    await this.used.updateMany(
      { accountId, kind: 'recovery', expiresAt: null },
      { $set: { expiresAt: new Date(this.now() + RETIRED_MARKER_MS) } },
    );
  }
}
