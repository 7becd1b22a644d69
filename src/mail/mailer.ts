/**
 * Account e-mail (verification, password reset, notices). `send` checks and renders the message
 * and stores it in the durable outbox (./outbox.ts) with one insert: no request waits on SMTP or
 * fails because of it. Each server process runs a worker that sends what is due, over SMTP with
 * SMTP_URL or, without it (development and tests only), as .eml files (./transport.ts).
 *
 * `send` rejects only for a caller bug (a bad address, a missing field, a link that is not
 * http(s)); delivery problems are the worker's, which retries and logs them.
 *
 * Queued mail holds live links: its recipient and content are sealed with a key derived from the
 * cookie keys (./sealed.ts), so every instance sharing COOKIE_KEYS can send it, and mail queued
 * before a rotation still goes out while the old key stays listed.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Connection } from 'mongoose';
import type { Config } from '../config.ts';
import { projectRoot } from '../local/services.ts';
import type { Logger } from '../observability/logger.ts';
import { createRenderer, type MailTemplate } from './templates.ts';
import { Outbox } from './outbox.ts';
import { createSealer } from './sealed.ts';
import { createTransport } from './transport.ts';
import { isValidEmail } from '../accounts/service.ts';

export type { MailTemplate };

/**
 * `data` per template (`name` is always optional):
 * - verify-email: link, expiresInHours
 * - reset-password: link, expiresInMinutes
 * - password-changed: when (ISO time), signInLink
 * - account-exists: signInLink, resetLink
 * - mfa-changed: enabled (boolean), when (ISO time)
 * Links must be absolute http(s) URLs; a missing field makes `send` reject.
 */
export interface MailMessage {
  to: string;
  template: MailTemplate;
  data: Record<string, unknown>;
}

export interface Mailer {
  send(message: MailMessage): Promise<void>;
}

export interface MailOutbox extends Mailer {
  /** Every process, at start. */
  ensureIndexes(): Promise<void>;
  /**
   * Server processes only: sends due messages until the returned function is called, which
   * resolves once the pass in progress is over. Its timers never keep the process alive.
   */
  startWorker(): () => Promise<void>;
  /** One pass over the due messages, as the worker makes it; resolves with how many it sent. */
  deliverDue(): Promise<number>;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const NOTICE_LIFETIME = 24 * HOUR;
const LONGEST_LIFETIME = 7 * 24 * HOUR;

/**
 * How long a message is worth sending: a link's mail as long as the mail says its link works
 * (defaults: reset 60 minutes, verification 24 hours), a notice for a day. Afterwards it is
 * dropped unsent, and the stored copy of its link with it.
 */
export function mailLifetimeMs(template: MailTemplate, data: Readonly<Record<string, unknown>>): number {
  const declared = template === 'verify-email' ? Number(data.expiresInHours) * HOUR
    : template === 'reset-password' ? Number(data.expiresInMinutes) * MINUTE : NaN;
  if (Number.isFinite(declared) && declared > 0) return Math.min(declared, LONGEST_LIFETIME);
  return template === 'reset-password' ? HOUR : NOTICE_LIFETIME;
}

let processKey: string | undefined;

/**
 * Without COOKIE_KEYS (development and tests only) one random key for the whole process, like its
 * cookies: every mailer in it opens what another queued, and mail a stopped process left queued
 * is dropped, with a warning, by the next one.
 */
function processKeys(): readonly string[] {
  processKey ??= randomBytes(32).toString('base64url');
  return [processKey];
}

/**
 * Compiles every mail view now, so a missing or broken one stops start-up, not a sign-up.
 * `cookieKeys`, newest first, seal queued mail: COOKIE_KEYS unless given.
 */
export function createMailer(
  config: Config, logger: Logger, connection: Connection, cookieKeys: readonly string[] = config.cookieKeys ?? processKeys(),
): MailOutbox {
  const render = createRenderer(path.join(projectRoot(), 'views', 'mail'));
  const { smtpUrl, from, outboxDir, retryBaseSeconds, retryMaxSeconds } = config.mail;
  const outbox = new Outbox(connection, createTransport(smtpUrl, from, outboxDir, logger), logger, {
    retryBaseSeconds, retryMaxSeconds, host: new URL(config.issuer).hostname, sealer: createSealer(cookieKeys),
  });
  return {
    async send({ to, template, data }) {
      // The same strict check accounts use: exactly one plain address, never a list.
      if (!isValidEmail(to)) throw new Error('refusing to send mail to an address that is not a plain email address');
      const { subject, text, html } = render(template, data);
      // Only the development outbox logs the link, so only it keeps a copy outside the text.
      const link = !smtpUrl && typeof data.link === 'string' ? data.link : undefined;
      await outbox.enqueue({ to, template, subject, text, html, link, lifetimeMs: mailLifetimeMs(template, data) });
    },
    ensureIndexes: () => outbox.ensureIndexes(),
    startWorker: () => outbox.startWorker(),
    deliverDue: () => outbox.deliverDue(),
  };
}
