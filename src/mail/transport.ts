/**
 * How the outbox worker hands one message on: to the SMTP server of SMTP_URL, or, without it
 * (development and tests only: production refuses to start without SMTP_URL), as an .eml file in
 * the outbox directory with its link logged, so a developer can follow it without a mail server.
 * A transport rejects when the message did not go out; the outbox decides whether to retry.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import nodemailer from 'nodemailer';
import type { Logger } from '../observability/logger.ts';
import type { MailTemplate } from './templates.ts';

/** A rendered message as the outbox keeps it. */
export interface OutgoingMail {
  /** `<id@host>`: the same on every attempt, so a receiver can tell a repeated delivery. */
  readonly messageId: string;
  readonly template: MailTemplate;
  readonly to: string;
  readonly subject: string;
  readonly text: string;
  readonly html: string;
  /** Development outbox only: logged so a developer can follow it. */
  readonly link?: string | undefined;
}

/** Sends one message; `signal` aborts an attempt that takes too long. */
export type Transport = (mail: OutgoingMail, signal: AbortSignal) => Promise<void>;

export function createTransport(smtpUrl: string | undefined, from: string, outboxDir: string, logger: Logger): Transport {
  return smtpUrl ? smtpTransport(smtpUrl, from, logger) : fileTransport(outboxDir, from, logger);
}

/**
 * A refusal of this very message (its sender, recipient or content) with a 5xx reply: sending it
 * again would be refused again. Connection failures, timeouts, 4xx replies and a server refusing
 * us as a whole (greeting, authentication) are not: they are about the server, not the message.
 */
export function isPermanentRefusal(error: unknown): boolean {
  const { code, responseCode } = error as { code?: unknown; responseCode?: unknown };
  if (code !== 'EENVELOPE' && code !== 'EMESSAGE') return false;
  // Without a reply code the message was refused before it left (no or invalid recipients).
  return typeof responseCode !== 'number' || (responseCode >= 500 && responseCode < 600 && responseCode !== 503);
}

/**
 * nodemailer's codes for a server that could not be reached or would not talk to us: refused,
 * reset or timed out, a proxy, no or a bad greeting, TLS, authentication, and our own attempt timeout.
 */
const SERVER_FAILURES = new Set([
  'ECONNECTION', 'ESOCKET', 'ETIMEDOUT', 'EDNS', 'EPROXY', 'ETLS', 'EREQUIRETLS', 'EPROTOCOL', 'EAUTH', 'ENOAUTH', 'EABORT',
]);

/**
 * A failure of the SMTP server as a whole, not of this message: the next message would fail the
 * same way, after the same wait. 421 is the server closing the session for everyone.
 * Replies about one message (4xx/5xx to its sender, recipient or content) are not.
 */
export function isServerFailure(error: unknown): boolean {
  const { code, responseCode } = error as { code?: unknown; responseCode?: unknown };
  return (typeof code === 'string' && SERVER_FAILURES.has(code)) || responseCode === 421;
}

/** What a log line may say about a failure: codes, never the text (it can quote the recipient). */
export function failureFields(error: unknown): Record<string, unknown> {
  const { code, originalCode, responseCode } = error as { code?: unknown; originalCode?: unknown; responseCode?: unknown };
  return Object.fromEntries(Object.entries({ code, originalCode, responseCode }).filter(([, value]) => value !== undefined));
}

/**
 * One recipient, exactly the given address: as an object (not a header string nodemailer would
 * parse as a list) and as the SMTP envelope.
 */
function envelope(mail: OutgoingMail) {
  const { to, subject, text, html, messageId } = mail;
  return { to: { name: '', address: to }, envelope: { to }, subject, text, html, messageId };
}

function smtpTransport(url: string, from: string, logger: Logger): Transport {
  // nodemailer waits up to two minutes to connect by default; a stuck server should cost an
  // attempt, not hold the worker. Query parameters in SMTP_URL (e.g. ?connectionTimeout=30000)
  // still override these.
  const transport = nodemailer.createTransport(
    { url, connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000 },
    { from },
  );
  return async (mail, signal) => {
    await transport.sendMail({ ...envelope(mail), signal });
    // Neither the recipient nor the link: one identifies a person, the other carries a live token.
    logger.info({ template: mail.template, messageId: mail.messageId }, 'mail sent');
  };
}

function fileTransport(dir: string, from: string, logger: Logger): Transport {
  // CRLF line ends make each file a standard RFC 5322 message that any mail client opens.
  const transport = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'windows' }, { from });
  return async (mail) => {
    const info = await transport.sendMail(envelope(mail));
    const file = path.join(dir, outboxFileName(mail.template));
    // The files hold live links: readable by this user only.
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await fs.writeFile(file, info.message as Buffer, { mode: 0o600, flag: 'wx' });
    logger.info({ template: mail.template, file, ...(mail.link ? { link: mail.link } : {}) }, 'mail written to the outbox (development)');
  };
}

/** Sorts by time; colons are left out of the ISO time because some file systems refuse them. */
function outboxFileName(template: MailTemplate): string {
  const time = new Date().toISOString().replaceAll(':', '-');
  return `${time}-${template}-${randomBytes(4).toString('hex')}.eml`;
}
