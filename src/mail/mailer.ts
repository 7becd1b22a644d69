/**
 * Account e-mail (verification, password reset, notices). With SMTP_URL every message goes to that
 * server. Without it (development and tests only: production refuses to start without SMTP_URL)
 * every message is written as an .eml file under the outbox directory and its link is logged, so
 * a developer can follow it without running a mail server.
 *
 * A failed send rejects: whether that fails a request or is only logged is the caller's decision.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import nodemailer from 'nodemailer';
import type { Config } from '../config.ts';
import { projectRoot } from '../local/services.ts';
import type { Logger } from '../observability/logger.ts';
import { createRenderer, type MailTemplate, type Renderer } from './templates.ts';
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

export function createMailer(config: Config, logger: Logger): Mailer {
  const render = createRenderer(path.join(projectRoot(), 'views', 'mail'));
  const { smtpUrl, from, outboxDir } = config.mail;
  return smtpUrl ? smtpMailer(smtpUrl, from, render, logger) : outboxMailer(outboxDir, from, render, logger);
}

function smtpMailer(url: string, from: string, render: Renderer, logger: Logger): Mailer {
  // nodemailer waits up to two minutes to connect by default; a request sending mail should not.
  // Query parameters in SMTP_URL (e.g. ?connectionTimeout=30000) still override these.
  const transport = nodemailer.createTransport(
    { url, connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000 },
    { from },
  );
  return {
    async send({ to, template, data }) {
      const info = await transport.sendMail({ ...recipient(to), ...render(template, data) });
      // Neither the recipient nor the link: one identifies a person, the other carries a live token.
      logger.info({ template, messageId: info.messageId }, 'mail sent');
    },
  };
}

function outboxMailer(dir: string, from: string, render: Renderer, logger: Logger): Mailer {
  // CRLF line ends make each file a standard RFC 5322 message that any mail client opens.
  const transport = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'windows' }, { from });
  return {
    async send({ to, template, data }) {
      const info = await transport.sendMail({ ...recipient(to), ...render(template, data) });
      const file = path.join(dir, outboxFileName(template));
      // The files hold live links: readable by this user only.
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      await fs.writeFile(file, info.message as Buffer, { mode: 0o600, flag: 'wx' });
      logger.info({ template, file, link: data.link }, 'mail written to the outbox (development)');
    },
  };
}

/**
 * One recipient, exactly the given address: as an object (not a header string nodemailer would
 * parse as a list) and as the SMTP envelope, after the same strict check accounts use.
 */
function recipient(address: string) {
  if (!isValidEmail(address)) throw new Error('refusing to send mail to an address that is not a plain email address');
  return { to: { name: '', address }, envelope: { to: address } };
}

/** Sorts by time; colons are left out of the ISO time because some file systems refuse them. */
function outboxFileName(template: MailTemplate): string {
  const time = new Date().toISOString().replaceAll(':', '-');
  return `${time}-${template}-${randomBytes(4).toString('hex')}.eml`;
}
