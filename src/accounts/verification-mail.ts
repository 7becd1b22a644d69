/**
 * The verification mail: a new single-use link to the account's address (the earlier ones stop
 * working), sent by an administrator's email change (AccountService.changeEmail) and by the
 * self-service resend (self-service.ts).
 */
import type { Mailer } from '../mail/mailer.ts';
import type { AccountView } from './service.ts';
import type { AccountTokens } from './tokens.ts';

/** What sends verification mail: the mailed tokens, the outbox and the issuer its links point to. */
export interface VerificationMail {
  tokens: AccountTokens;
  mailer: Mailer;
  issuer: string;
}

export const VERIFY_EMAIL_TTL_SECONDS = 24 * 3600;

export async function sendVerificationLink(mail: VerificationMail, account: AccountView, interaction?: string): Promise<void> {
  await mail.tokens.revokeAll('verify-email', account.id);
  const token = await mail.tokens.issue('verify-email', { accountId: account.id, email: account.email, interaction }, VERIFY_EMAIL_TTL_SECONDS);
  const link = `${mail.issuer}/verify-email?token=${encodeURIComponent(token)}`;
  await mail.mailer.send({ to: account.email, template: 'verify-email', data: { name: account.name, link, expiresInHours: VERIFY_EMAIL_TTL_SECONDS / 3600 } });
}
