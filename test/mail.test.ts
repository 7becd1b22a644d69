/**
 * The mailer against a real SMTP server (test/support/smtp.ts) and, without SMTP_URL, against the
 * development outbox on disk: each message goes through the MongoDB outbox and one worker pass
 * (deliverDue), as in the server. Logs go to memory so the tests can check what they reveal.
 * Outages, retries and several workers are in resilience-mail.test.ts.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { simpleParser } from 'mailparser';
import mongoose from 'mongoose';
import { pino } from 'pino';
import { loadConfig, type Config } from '../src/config.ts';
import { freePort } from '../src/local/services.ts';
import { createMailer, mailLifetimeMs, type MailMessage } from '../src/mail/mailer.ts';
import { LEASE_COLLECTION, OUTBOX_COLLECTION } from '../src/mail/outbox.ts';
import { createSealer } from '../src/mail/sealed.ts';
import type { Logger } from '../src/observability/logger.ts';
import { testMongoUri } from './support/env.ts';
import { linkFrom, startSmtpCapture, type SmtpCapture } from './support/smtp.ts';

const HOSTILE = '<script>alert(1)</script>';
const FROM = 'Example ID <id@example.com>';
// Long enough to be wrapped by quoted-printable encoding, with an & that HTML must escape.
const TOKEN = 'tK9_-'.repeat(12);
const VERIFY = `https://id.example.com/verify-email?token=${TOKEN}&next=%2F`;
const RESET = `https://id.example.com/reset-password?token=${TOKEN}&email=alice%40example.com`;
const SIGN_IN = 'https://id.example.com/signin';
const WHEN = '2024-05-01T12:34:56.000Z';

interface Case {
  readonly message: Omit<MailMessage, 'to'>;
  readonly subject: string;
  readonly links: readonly string[];
}

const CASES: Record<string, Case> = {
  'verify-email': {
    message: { template: 'verify-email', data: { name: HOSTILE, link: VERIFY, expiresInHours: 24 } },
    subject: 'Confirm your email address',
    links: [VERIFY],
  },
  'reset-password': {
    message: { template: 'reset-password', data: { name: HOSTILE, link: RESET, expiresInMinutes: 30 } },
    subject: 'Reset your password',
    links: [RESET],
  },
  'password-changed': {
    message: { template: 'password-changed', data: { name: HOSTILE, when: WHEN, signInLink: SIGN_IN } },
    subject: 'Your password was changed',
    links: [SIGN_IN],
  },
  'account-exists': {
    message: { template: 'account-exists', data: { name: HOSTILE, signInLink: SIGN_IN, resetLink: RESET } },
    subject: 'You already have an account',
    links: [SIGN_IN, RESET],
  },
  'mfa-changed (on)': {
    message: { template: 'mfa-changed', data: { name: HOSTILE, enabled: true, when: WHEN } },
    subject: 'Two-step verification was turned on',
    links: [],
  },
  'mfa-changed (off)': {
    message: { template: 'mfa-changed', data: { name: HOSTILE, enabled: false, when: WHEN } },
    subject: 'Two-step verification was turned off',
    links: [],
  },
};

/** A logger that keeps its JSON lines in memory. */
function memoryLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, lines };
}

let connection: mongoose.Connection;
beforeAll(async () => {
  connection = await mongoose.createConnection(testMongoUri('mail'), { autoIndex: false }).asPromise();
});
afterAll(async () => {
  await connection.dropDatabase();
  await connection.close();
});
beforeEach(async () => {
  await Promise.all([OUTBOX_COLLECTION, LEASE_COLLECTION].map((name) => connection.collection(name).deleteMany({})));
});

const outbox = () => connection.collection(OUTBOX_COLLECTION);

/** Stores the message in the outbox, then makes one worker pass; resolves with how many were sent. */
async function sendNow(config: Config, logger: Logger, message: MailMessage): Promise<number> {
  const mailer = createMailer(config, logger, connection);
  await mailer.send(message);
  return mailer.deliverDue();
}

function escapeHtml(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&#34;');
}

describe('with SMTP_URL', () => {
  let capture: SmtpCapture;
  let config: ReturnType<typeof loadConfig>;

  beforeAll(async () => {
    capture = await startSmtpCapture();
    config = loadConfig({ NODE_ENV: 'test', SMTP_URL: capture.url, MAIL_FROM: FROM });
  });
  afterAll(() => capture.close());
  beforeEach(() => capture.clear());

  test.each(Object.entries(CASES))('%s: subject, addresses, both parts, links, escaped name', async (_label, { message, subject, links }) => {
    const to = `alice+${message.template}@example.com`;
    const { logger } = memoryLogger();
    expect(await sendNow(config, logger, { to, ...message })).toBe(1);

    const mail = await capture.waitFor((m) => m.to.includes(to));
    expect(mail.subject).toBe(subject);
    expect(mail.to).toEqual([to]);
    expect(mail.from).toBe('"Example ID" <id@example.com>');
    expect(mail.text).toMatch(/^Hello /);
    expect(mail.html).toMatch(/^<!doctype html>/);
    for (const link of links) {
      expect(linkFrom(mail.text, new URL(link).pathname)).toBe(link);
      expect(mail.html).toContain(`href="${escapeHtml(link)}"`);
    }
    if ('when' in message.data) {
      expect(mail.text).toContain('01 May 2024 12:34:56');
      expect(mail.html).toContain('01 May 2024 12:34:56');
    }
    // The text part is not HTML, so the name stays as typed there; the HTML part must escape it.
    expect(mail.text).toContain(HOSTILE);
    expect(mail.html).toContain(escapeHtml(HOSTILE));
    expect(mail.html).not.toMatch(/<script|\bsrc=|<link|<img|url\(/i);
  });

  test('logs one line per message with the template and messageId, never the recipient or the link', async () => {
    const { logger, lines } = memoryLogger();
    const to = 'bob@example.com';
    await sendNow(config, logger, { to, template: 'reset-password', data: { link: RESET, expiresInMinutes: 30 } });

    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 30, template: 'reset-password', messageId: expect.stringMatching(/^<.+>$/) });
    expect(JSON.stringify(lines)).not.toContain('bob');
    expect(JSON.stringify(lines)).not.toContain(TOKEN);
  });

  test('a message without a name greets plainly', async () => {
    await sendNow(config, memoryLogger().logger, { to: 'carol@example.com', template: 'verify-email', data: { link: VERIFY, expiresInHours: 1 } });
    const mail = await capture.waitFor((m) => m.to.includes('carol@example.com'));
    expect(mail.text).toMatch(/^Hello,\n/);
    expect(mail.text).toContain('expires in 1 hour.');
  });

  test.each<[string, MailMessage['data']]>([
    ['a missing link', { expiresInHours: 24 }],
    ['a javascript: link', { link: 'javascript:alert(1)', expiresInHours: 24 }],
    ['a relative link', { link: '/verify-email?token=x', expiresInHours: 24 }],
  ])('refuses to send with %s, and stores nothing', async (_label, data) => {
    const mailer = createMailer(config, memoryLogger().logger, connection);
    await expect(mailer.send({ to: 'dave@example.com', template: 'verify-email', data })).rejects.toThrow(/verify-email.*link/);
    expect(await mailer.deliverDue()).toBe(0);
    expect(await outbox().countDocuments()).toBe(0);
    expect(capture.messages).toHaveLength(0);
  });

  test.each(['dave@example.com, eve@example.com', 'Dave <dave@example.com>', 'dave@example.com\r\nBcc: eve@example.com'])(
    'refuses a recipient that is not one plain address: %j', async (to) => {
      const mailer = createMailer(config, memoryLogger().logger, connection);
      await expect(mailer.send({ to, template: 'mfa-changed', data: { enabled: true, when: WHEN } })).rejects.toThrow(/plain email address/);
      expect(await outbox().countDocuments()).toBe(0);
    });

  test('an unreachable SMTP server fails neither the send nor the pass: the message waits for its retry', async () => {
    const closed = loadConfig({ NODE_ENV: 'test', SMTP_URL: `smtp://127.0.0.1:${await freePort()}` });
    const { logger, lines } = memoryLogger();
    expect(await sendNow(closed, logger, { to: 'erin@example.com', template: 'verify-email', data: { link: VERIFY, expiresInHours: 24 } })).toBe(0);

    expect(lines).toEqual([expect.objectContaining({
      level: 40, template: 'verify-email', messageId: expect.stringMatching(/^<.+>$/), attempts: 1, originalCode: 'ECONNREFUSED',
    })]);
    expect(JSON.stringify(lines)).not.toContain('erin');
    expect(JSON.stringify(lines)).not.toContain(TOKEN);
    const [stored] = await outbox().find().toArray();
    expect(stored).toMatchObject({ attempts: 1, sealed: expect.any(Object) });
    expect((stored!.nextAttemptAt as Date).getTime()).toBeGreaterThan(Date.now());
  });

  test('a sent message keeps neither its recipient nor its content in the database', async () => {
    await sendNow(config, memoryLogger().logger, { to: 'fred@example.com', template: 'reset-password', data: { link: RESET, expiresInMinutes: 30 } });
    const stored = await outbox().find().toArray();
    expect(stored).toEqual([expect.objectContaining({ sentAt: expect.any(Date), template: 'reset-password' })]);
    expect(JSON.stringify(stored)).not.toContain('fred');
    expect(JSON.stringify(stored)).not.toContain(TOKEN);
  });
});

describe('sealed at rest', () => {
  const OLD_KEY = 'old-cookie-key-'.padEnd(40, 'o');
  const NEW_KEY = 'new-cookie-key-'.padEnd(40, 'n');
  let capture: SmtpCapture;
  const withKeys = (...keys: string[]) => loadConfig({ NODE_ENV: 'test', SMTP_URL: capture.url, COOKIE_KEYS: keys.join(',') });
  const resetFor = (to: string): MailMessage => ({ to, template: 'reset-password', data: { name: 'Alice Liddell', link: RESET, expiresInMinutes: 30 } });

  beforeAll(async () => {
    capture = await startSmtpCapture();
  });
  afterAll(() => capture.close());
  beforeEach(() => capture.clear());

  test('a queued message holds neither its recipient, name, subject nor link in the clear, and arrives intact', async () => {
    const mailer = createMailer(withKeys(NEW_KEY), memoryLogger().logger, connection);
    await mailer.send(resetFor('alice@example.com'));

    const raw = await outbox().find().toArray();
    expect(raw).toHaveLength(1);
    expect(Object.keys(raw[0]!).sort()).toEqual(['_id', 'attempts', 'createdAt', 'expiresAt', 'messageId', 'nextAttemptAt', 'sealed', 'template']);
    expect(raw[0]!.sealed).toEqual({ key: expect.stringMatching(/^[\w-]{11}$/), box: expect.any(String) });
    // Neither in the document nor in the box merely encoded.
    const dump = JSON.stringify(raw) + Buffer.from((raw[0]!.sealed as { box: string }).box, 'base64url').toString('latin1');
    for (const secret of ['alice', 'Liddell', 'Reset your password', TOKEN, 'token=']) expect(dump).not.toContain(secret);

    expect(await mailer.deliverDue()).toBe(1);
    const mail = await capture.waitFor((m) => m.to.includes('alice@example.com'));
    expect(mail.subject).toBe('Reset your password');
    expect(linkFrom(mail.text, '/reset-password')).toBe(RESET);
    expect(mail.html).toContain(`href="${escapeHtml(RESET)}"`);
    expect(mail.text).toContain('Alice Liddell');
  });

  test('the development outbox seals the copy of the link it logs, too', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-mail-'));
    try {
      const mailer = createMailer(loadConfig({ NODE_ENV: 'development', LOCAL_DATA_DIR: dataDir }), memoryLogger().logger, connection);
      await mailer.send(resetFor('alice@example.com'));
      const raw = await outbox().find().toArray();
      expect(raw).toEqual([expect.objectContaining({ sealed: expect.any(Object) })]);
      expect(raw[0]).not.toHaveProperty('link');
      expect(JSON.stringify(raw)).not.toContain(TOKEN);
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test('after a new key is put in front, mail sealed with the old one still goes out; new mail is sealed with the new one', async () => {
    await createMailer(withKeys(OLD_KEY), memoryLogger().logger, connection).send(resetFor('before@example.com'));
    const rotated = createMailer(withKeys(NEW_KEY, OLD_KEY), memoryLogger().logger, connection);
    await rotated.send(resetFor('after@example.com'));
    const keyIds = (await outbox().find().sort({ createdAt: 1 }).toArray()).map((record) => (record.sealed as { key: string }).key);
    expect(new Set(keyIds).size).toBe(2);

    expect(await rotated.deliverDue()).toBe(2);
    for (const to of ['before@example.com', 'after@example.com']) {
      const mail = await capture.waitFor((m) => m.to.includes(to));
      expect(linkFrom(mail.text, '/reset-password')).toBe(RESET);
    }
    // What `after` was sealed with is the new key alone.
    await rotated.send(resetFor('again@example.com'));
    expect(await createMailer(withKeys(NEW_KEY), memoryLogger().logger, connection).deliverDue()).toBe(1);
  });

  test('a message no configured key opens, or whose sealed content was moved onto another message, is dropped with a warning naming only its template and id', async () => {
    await createMailer(withKeys(OLD_KEY), memoryLogger().logger, connection).send(resetFor('retired@example.com'));
    const current = createMailer(withKeys(NEW_KEY), memoryLogger().logger, connection);
    await current.send(resetFor('first@example.com'));
    await current.send(resetFor('second@example.com'));
    const [, first, second] = await outbox().find().sort({ createdAt: 1 }).toArray();
    // The first message's content under the second's id: the key matches, the message id does not.
    await outbox().updateOne({ _id: second!._id }, { $set: { sealed: first!.sealed } });

    const { logger, lines } = memoryLogger();
    expect(await createMailer(withKeys(NEW_KEY), logger, connection).deliverDue()).toBe(1);
    await capture.waitFor((m) => m.to.includes('first@example.com'));
    expect(capture.messages.map((m) => m.to)).toEqual([['first@example.com']]);

    const dropped = lines.filter((line) => /cannot be unsealed/.test(String(line.msg)));
    expect(dropped).toHaveLength(2);
    for (const line of dropped) {
      expect(Object.keys(line).sort()).toEqual(['hostname', 'level', 'messageId', 'msg', 'pid', 'template', 'time']);
      expect(line).toMatchObject({ level: 40, template: 'reset-password' });
    }
    expect(await outbox().countDocuments({ sentAt: { $exists: false } })).toBe(0);
  });

  test('each seal draws a fresh IV, and an altered box opens to nothing', () => {
    const sealer = createSealer([NEW_KEY]);
    const once = sealer.seal('id-1', 'secret');
    const twice = sealer.seal('id-1', 'secret');
    expect(once.key).toBe(twice.key);
    expect(once.box).not.toBe(twice.box);
    expect(Buffer.from(once.box, 'base64url').subarray(0, 12)).not.toEqual(Buffer.from(twice.box, 'base64url').subarray(0, 12));
    expect(sealer.open('id-1', once)).toBe('secret');

    const bytes = Buffer.from(once.box, 'base64url');
    bytes[14]! ^= 1;
    expect(sealer.open('id-1', { key: once.key, box: bytes.toString('base64url') })).toBeUndefined();
    expect(sealer.open('id-2', once)).toBeUndefined();
    expect(createSealer([OLD_KEY]).open('id-1', once)).toBeUndefined();
    expect(sealer.open('id-1', undefined)).toBeUndefined();
  });
});

describe('message lifetime', () => {
  test('a link mail lives as long as the mail says its link works; a notice for a day; never over a week', () => {
    const minute = 60_000;
    const hour = 60 * minute;
    expect(mailLifetimeMs('reset-password', { link: RESET, expiresInMinutes: 60 })).toBe(60 * minute);
    expect(mailLifetimeMs('verify-email', { link: VERIFY, expiresInHours: 24 })).toBe(24 * hour);
    expect(mailLifetimeMs('verify-email', { link: VERIFY, expiresInHours: 24 * 365 })).toBe(7 * 24 * hour);
    expect(mailLifetimeMs('reset-password', { link: RESET, expiresInMinutes: 'soon' })).toBe(60 * minute);
    expect(mailLifetimeMs('password-changed', { when: WHEN, signInLink: SIGN_IN })).toBe(24 * hour);
    expect(mailLifetimeMs('mfa-changed', { enabled: true, when: WHEN })).toBe(24 * hour);
  });

  test('the stored message expires with its link', async () => {
    const config = loadConfig({ NODE_ENV: 'test', SMTP_URL: `smtp://127.0.0.1:${await freePort()}` });
    await createMailer(config, memoryLogger().logger, connection)
      .send({ to: 'ivan@example.com', template: 'reset-password', data: { link: RESET, expiresInMinutes: 30 } });
    const [stored] = await outbox().find().toArray();
    expect((stored!.expiresAt as Date).getTime() - (stored!.createdAt as Date).getTime()).toBe(30 * 60_000);
  });
});

describe('without SMTP_URL (development outbox)', () => {
  let dataDir: string;
  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-mail-'));
  });
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  test('writes a complete .eml file to the outbox and logs its path and link', async () => {
    const config = loadConfig({ NODE_ENV: 'development', LOCAL_DATA_DIR: dataDir });
    const { logger, lines } = memoryLogger();
    expect(await sendNow(config, logger, { to: 'frank@example.com', template: 'reset-password', data: { link: RESET, expiresInMinutes: 30 } })).toBe(1);

    const files = fs.readdirSync(config.mail.outboxDir);
    expect(files).toEqual([expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}Z-reset-password-[0-9a-f]{8}\.eml$/)]);
    const file = path.join(config.mail.outboxDir, files[0]!);
    expect(fs.statSync(file).mode & 0o077).toBe(0);
    const raw = fs.readFileSync(file);
    // RFC 5322 lines end in CRLF.
    expect(raw.toString('latin1')).toMatch(/^Subject: Reset your password\r\n/m);
    expect(raw.toString('latin1')).not.toMatch(/[^\r]\n/);

    const parsed = await simpleParser(raw);
    expect(parsed.from?.text).toBe('"oidc-idp" <no-reply@localhost>');
    expect(parsed.to).toMatchObject({ text: 'frank@example.com' });
    expect(parsed.subject).toBe('Reset your password');
    expect(parsed.messageId).toMatch(/^<.+>$/);
    expect(parsed.date).toBeInstanceOf(Date);
    expect(linkFrom(parsed.text ?? '')).toBe(RESET);
    expect(parsed.html || '').toContain(`href="${escapeHtml(RESET)}"`);

    expect(lines).toEqual([expect.objectContaining({ level: 30, template: 'reset-password', file, link: RESET })]);
  });

  test('a message without data.link is written and logged without a link', async () => {
    const config = loadConfig({ NODE_ENV: 'development', LOCAL_DATA_DIR: dataDir });
    const { logger, lines } = memoryLogger();
    await sendNow(config, logger, { to: 'gina@example.com', template: 'mfa-changed', data: { enabled: true, when: WHEN } });

    expect(fs.readdirSync(config.mail.outboxDir)).toHaveLength(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toHaveProperty('link');
  });
});

describe('test helpers', () => {
  let capture: SmtpCapture;
  beforeAll(async () => {
    capture = await startSmtpCapture();
  });
  afterAll(() => capture.close());

  test('waitFor resolves with a message that arrives later, and times out naming what did arrive', async () => {
    const later = capture.waitFor((m) => m.to.includes('hank@example.com'));
    await sendNow(loadConfig({ NODE_ENV: 'test', SMTP_URL: capture.url }), memoryLogger().logger,
      { to: 'hank@example.com', template: 'verify-email', data: { link: VERIFY, expiresInHours: 24 } });
    await expect(later).resolves.toMatchObject({ subject: 'Confirm your email address' });

    await expect(capture.waitFor((m) => m.to.includes('nobody@example.com'), 100))
      .rejects.toThrow(/within 100 ms; received: "Confirm your email address" to hank@example.com/);
  });

  test('linkFrom finds the first link, or the first under a path, and throws when there is none', () => {
    const text = `Sign in at ${SIGN_IN}.\nOr reset (${RESET}), then go on.`;
    expect(linkFrom(text)).toBe(SIGN_IN);
    expect(linkFrom(text, '/reset-password')).toBe(RESET);
    expect(() => linkFrom(text, '/verify-email')).toThrow(/no link with a path starting \/verify-email/);
    expect(() => linkFrom('no links here')).toThrow(/no link/);
  });
});
