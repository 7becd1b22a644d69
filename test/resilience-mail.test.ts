/**
 * Mail never lost, never in the way: the outbox against SMTP servers that hang, refuse, go away
 * and come back on the same port, two workers sharing one database, claims of a worker that died,
 * messages that outlive their links, a database that stops answering, and the real app.
 */
import mongoose from 'mongoose';
import { pino } from 'pino';
import { loadConfig } from '../src/config.ts';
import { createMailer, type MailMessage, type MailOutbox } from '../src/mail/mailer.ts';
import { LEASE_COLLECTION, OUTBOX_COLLECTION, leaseKey } from '../src/mail/outbox.ts';
import type { Logger } from '../src/observability/logger.ts';
import { Browser, readForm } from './support/browser.ts';
import { testMongoUri } from './support/env.ts';
import { startFaultyMongo, type FaultyService } from './support/faults.ts';
import { startTestServer } from './support/server.ts';
import { linkFrom, startSilentServer, startSmtpCapture, type SmtpCapture } from './support/smtp.ts';

const TOKEN = 'rS4_-'.repeat(9);
const RESET = `https://id.example.com/reset?token=${TOKEN}&email=alice%40example.com`;
const RETRY = { MAIL_RETRY_BASE_SECONDS: '1', MAIL_RETRY_MAX_SECONDS: '2' };

type Line = Record<string, unknown>;

function memoryLogger(): { logger: Logger; lines: Line[] } {
  const lines: Line[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Line) });
  return { logger, lines };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `check` is true; fails naming `what` after `timeoutMs`. */
async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

const reset = (to: string, expiresInMinutes = 60): MailMessage => ({ to, template: 'reset-password', data: { link: RESET, expiresInMinutes } });
const addressed = (smtp: SmtpCapture, to: string) => smtp.messages.filter((mail) => mail.to.includes(to));

async function timed(work: Promise<void>): Promise<number> {
  const started = performance.now();
  await work;
  return performance.now() - started;
}

const databaseUri = testMongoUri('mail_resilience');
let connection: mongoose.Connection;
const unsent = () => connection.collection(OUTBOX_COLLECTION).countDocuments({ sentAt: { $exists: false } });

beforeAll(async () => {
  connection = await mongoose.createConnection(databaseUri, { autoIndex: false }).asPromise();
});
afterAll(async () => {
  await connection.dropDatabase();
  await connection.close();
});
beforeEach(async () => {
  await Promise.all([OUTBOX_COLLECTION, LEASE_COLLECTION].map((name) => connection.collection(name).deleteMany({})));
});

describe('one worker', () => {
  const stops: (() => Promise<void>)[] = [];
  afterEach(async () => {
    await Promise.all(stops.splice(0).map((stop) => stop()));
  });

  /** A mailer with its worker running, as in a server process. */
  async function running(env: Record<string, string>, logger: Logger): Promise<MailOutbox> {
    const mailer = createMailer(loadConfig({ NODE_ENV: 'test', ...RETRY, ...env }), logger, connection);
    await mailer.ensureIndexes();
    stops.push(mailer.startWorker());
    return mailer;
  }

  test('an SMTP server that hangs, then refuses, then is back on the same port: sends return at once, the mail arrives once, its link intact', async () => {
    const hung = await startSilentServer();
    const { port } = hung;
    const { logger, lines } = memoryLogger();
    // Without the outbox a send would wait out the greeting timeout.
    const mailer = await running({ SMTP_URL: `${hung.url}?greetingTimeout=5000` }, logger);

    expect(await timed(mailer.send(reset('alice@example.com')))).toBeLessThan(2000);
    await waitUntil('the worker to reach the hung server', () => hung.connections.length > 0);
    expect(await timed(mailer.send(reset('bob@example.com')))).toBeLessThan(2000);
    await waitUntil('a timed-out attempt', () => lines.some((line) => line.code === 'ETIMEDOUT'), 20_000);

    // Gone: connections are refused.
    await hung.close();
    await waitUntil('a refused attempt', () => lines.some((line) => line.originalCode === 'ECONNREFUSED'));
    expect(await unsent()).toBe(2);

    const smtp = await startSmtpCapture({ port });
    try {
      await smtp.waitFor((mail) => mail.to.includes('alice@example.com'), 15_000);
      await smtp.waitFor((mail) => mail.to.includes('bob@example.com'), 15_000);
      await waitUntil('the outbox to empty', async () => (await unsent()) === 0);
      // Several more passes: still nothing sent twice.
      await sleep(2500);
      for (const to of ['alice@example.com', 'bob@example.com']) {
        const [mail, ...again] = addressed(smtp, to);
        expect(again).toHaveLength(0);
        expect(linkFrom(mail!.text, '/reset')).toBe(RESET);
        expect(mail!.html).toContain(`href="${RESET.replaceAll('&', '&amp;')}"`);
      }
    } finally {
      await smtp.close();
    }
    const failures = lines.filter((line) => line.msg === 'mail not sent; will retry');
    expect(failures.length).toBeGreaterThanOrEqual(2);
    expect(lines).toContainEqual(expect.objectContaining({ level: 30, msg: 'mail worker: the SMTP server answers again' }));
    expect(failures.every((line) => line.level === 40 && line.template === 'reset-password' && typeof line.messageId === 'string')).toBe(true);
    expect(JSON.stringify(lines)).not.toMatch(/alice|bob|rS4_/);
  }, 60_000);

  test('a message that outlives its link is dropped with a warning naming only its template and id, and never sent', async () => {
    const smtp = await startSmtpCapture();
    await smtp.stop();
    try {
      const { logger, lines } = memoryLogger();
      const mailer = await running({ SMTP_URL: smtp.url }, logger);
      // A link that works for 3 seconds, while the SMTP server is down.
      await mailer.send(reset('carol@example.com', 0.05));
      await waitUntil('the expiry warning', () => lines.some((line) => /expired/.test(String(line.msg))));

      const dropped = lines.filter((line) => /expired/.test(String(line.msg)));
      expect(dropped).toEqual([expect.objectContaining({ level: 40, template: 'reset-password', messageId: expect.stringMatching(/^<.+>$/) })]);
      expect(Object.keys(dropped[0]!).sort()).toEqual(['level', 'messageId', 'msg', 'pid', 'hostname', 'template', 'time'].sort());
      expect(lines.some((line) => line.msg === 'mail not sent; will retry')).toBe(true);
      expect(JSON.stringify(lines)).not.toMatch(/carol|rS4_/);
      expect(await connection.collection(OUTBOX_COLLECTION).countDocuments()).toBe(0);

      await smtp.start();
      await sleep(2500);
      expect(smtp.messages).toHaveLength(0);
    } finally {
      await smtp.close();
    }
  }, 30_000);

  test('a permanent refusal (550) is dropped after one attempt; a transient one (451) is retried until accepted', async () => {
    let deferring = true;
    const smtp = await startSmtpCapture({
      refuseRecipient: (address) => (address.startsWith('bounce') ? 550 : address.startsWith('later') && deferring ? 451 : undefined),
    });
    try {
      const { logger, lines } = memoryLogger();
      const mailer = createMailer(loadConfig({ NODE_ENV: 'test', ...RETRY, SMTP_URL: smtp.url }), logger, connection);
      await mailer.send(reset('bounce@example.com'));
      await mailer.send(reset('later@example.com'));
      expect(await mailer.deliverDue()).toBe(0);

      expect(lines).toHaveLength(2);
      expect(lines).toEqual(expect.arrayContaining([
        expect.objectContaining({ level: 50, msg: 'mail refused by the SMTP server; dropped', template: 'reset-password', responseCode: 550 }),
        expect.objectContaining({ level: 40, msg: 'mail not sent; will retry', template: 'reset-password', responseCode: 451, attempts: 1 }),
      ]));
      // A refusal of one message is not the server failing: the pass went on to the next one.
      const deferred = lines.find((line) => line.responseCode === 451)!;
      expect(await connection.collection(OUTBOX_COLLECTION).find().toArray()).toEqual([expect.objectContaining({ messageId: deferred.messageId, attempts: 1 })]);

      deferring = false;
      stops.push(mailer.startWorker());
      await smtp.waitFor((mail) => mail.to.includes('later@example.com'), 10_000);
      await waitUntil('the outbox to empty', async () => (await unsent()) === 0);
      expect(smtp.messages.map((mail) => mail.to)).toEqual([['later@example.com']]);
      expect(JSON.stringify(lines)).not.toMatch(/bounce|later@/);
    } finally {
      await smtp.close();
    }
  });

  test('an SMTP server that never greets costs one timeout per pass, and only the message tried is charged an attempt', async () => {
    const hung = await startSilentServer();
    try {
      const { logger, lines } = memoryLogger();
      const mailer = createMailer(loadConfig({ NODE_ENV: 'test', ...RETRY, SMTP_URL: `${hung.url}?greetingTimeout=1000` }), logger, connection);
      for (let i = 0; i < 5; i += 1) await mailer.send(reset(`queued${i}@example.com`));
      const before = Date.now();

      // Trying all five would take five greeting timeouts.
      expect(await timed(mailer.deliverDue().then(() => undefined))).toBeLessThan(3000);
      expect(hung.connections).toHaveLength(1);
      expect(lines.filter((line) => line.msg === 'mail not sent; will retry')).toEqual([expect.objectContaining({ code: 'ETIMEDOUT', attempts: 1 })]);
      const stored = await connection.collection(OUTBOX_COLLECTION).find().toArray();
      expect(stored.map((record) => record.attempts as number).sort()).toEqual([0, 0, 0, 0, 1]);
      // The four not tried are still due now, not pushed back.
      expect(stored.filter((record) => record.attempts === 0).every((record) => (record.nextAttemptAt as Date).getTime() <= before)).toBe(true);
    } finally {
      await hung.close();
    }
  }, 30_000);

  test('the worker backs off from a silent SMTP server as a whole, new mail does not cut the wait short, and everything goes out once it is back', async () => {
    const hung = await startSilentServer();
    const { logger, lines } = memoryLogger();
    // Backoff 1, 2, 4, 4 s (less up to a quarter), each after a 300 ms greeting timeout.
    const mailer = await running({ MAIL_RETRY_BASE_SECONDS: '1', MAIL_RETRY_MAX_SECONDS: '4', SMTP_URL: `${hung.url}?greetingTimeout=300` }, logger);
    let stop: (() => Promise<void>) | undefined = stops.pop();
    const recipients = Array.from({ length: 5 }, (_, i) => `waiting${i}@example.com`);
    try {
      for (const to of recipients) await mailer.send(reset(to));
      await waitUntil('a second pass', () => hung.connections.length >= 2, 10_000);
      // Mid-backoff: a new message wakes the worker, which must keep waiting.
      recipients.push('late@example.com');
      await mailer.send(reset('late@example.com'));
      await waitUntil('a fourth pass', () => hung.connections.length >= 4, 20_000);
      await stop!();
      stop = undefined;

      const gaps = hung.connections.slice(1).map((at, i) => at - hung.connections[i]!);
      // Not one connection per queued message (those would follow each other every 300 ms).
      expect(gaps.every((gap) => gap > 700)).toBe(true);
      // The third wait is 3 to 4 s; without backoff it would be the 1 s poll.
      expect(gaps[2]).toBeGreaterThan(2500);
      const stored = await connection.collection(OUTBOX_COLLECTION).find().toArray();
      // One attempt charged per connection, none to the messages that waited.
      expect(stored.reduce((sum, record) => sum + (record.attempts as number), 0)).toBe(hung.connections.length);
      expect(lines.filter((line) => /backing off/.test(String(line.msg)))).toEqual([expect.objectContaining({ level: 40 })]);
    } finally {
      await stop?.();
      await hung.close();
    }

    const smtp = await startSmtpCapture({ port: hung.port });
    try {
      stops.push(mailer.startWorker());
      await waitUntil('every message to arrive', () => recipients.every((to) => addressed(smtp, to).length === 1), 20_000);
      for (const to of recipients) expect(linkFrom(addressed(smtp, to)[0]!.text, '/reset')).toBe(RESET);
    } finally {
      await smtp.close();
    }
  }, 60_000);
});

describe('several workers on one database', () => {
  let smtp: SmtpCapture;
  let other: mongoose.Connection;
  beforeAll(async () => {
    smtp = await startSmtpCapture();
    // The second instance's own connection to the same database.
    other = await mongoose.createConnection(databaseUri, { autoIndex: false }).asPromise();
  });
  afterAll(async () => {
    await other.close();
    await smtp.close();
  });
  beforeEach(() => smtp.clear());

  const config = () => loadConfig({ NODE_ENV: 'test', ...RETRY, SMTP_URL: smtp.url });

  test('two workers passing over the same messages at the same time send each one once', async () => {
    const first = createMailer(config(), memoryLogger().logger, connection);
    const second = createMailer(config(), memoryLogger().logger, other);
    const recipients = Array.from({ length: 20 }, (_, i) => `user${i}@example.com`);
    for (const to of recipients) await first.send(reset(to));

    let sent = 0;
    for (let round = 0; round < 10 && (await unsent()) > 0; round += 1) {
      const counts = await Promise.all([first.deliverDue(), second.deliverDue(), first.deliverDue(), second.deliverDue()]);
      sent += counts.reduce((a, b) => a + b, 0);
    }
    expect(await unsent()).toBe(0);
    expect(sent).toBe(recipients.length);
    expect(smtp.messages.map((mail) => mail.to[0]).sort()).toEqual([...recipients].sort());
  }, 60_000);

  test('a claim left by a worker that died is taken over once it expires, and only then', async () => {
    const mailer = createMailer(config(), memoryLogger().logger, connection);
    await mailer.send(reset('dave@example.com'));
    const [message] = await connection.collection(OUTBOX_COLLECTION).find().toArray();
    const id = String(message!._id);
    // What a worker that claimed the first attempt and then died leaves behind.
    await connection.collection(LEASE_COLLECTION).insertOne({
      _id: leaseKey(id, 0) as never, until: new Date(Date.now() + 60_000), messageExpiresAt: message!.expiresAt,
    });
    expect(await mailer.deliverDue()).toBe(0);
    expect(smtp.messages).toHaveLength(0);

    await connection.collection(LEASE_COLLECTION).updateOne({ _id: leaseKey(id, 0) as never }, { $set: { until: new Date(Date.now() - 1000) } });
    expect(await mailer.deliverDue()).toBe(1);
    expect(await mailer.deliverDue()).toBe(0);
    expect(addressed(smtp, 'dave@example.com')).toHaveLength(1);
  });
});

interface FaultyOutbox {
  mongo: FaultyService;
  smtp: SmtpCapture;
  mailer: MailOutbox;
  lines: Line[];
}

/** A running outbox worker on a database of the test's own, which the test may pause or kill. */
async function withFaultyOutbox(test: (outbox: FaultyOutbox) => Promise<void>): Promise<void> {
  const mongo = await startFaultyMongo();
  const smtp = await startSmtpCapture();
  // As the server connects (src/services.ts): bounded waits, nothing buffered.
  const db = await mongoose.createConnection(`${mongo.uri}/mail`, {
    autoIndex: false, bufferCommands: false, serverSelectionTimeoutMS: 1000, socketTimeoutMS: 1500, heartbeatFrequencyMS: 1000,
  }).asPromise();
  const { logger, lines } = memoryLogger();
  const mailer = createMailer(loadConfig({ NODE_ENV: 'test', ...RETRY, SMTP_URL: smtp.url }), logger, db);
  let stop: (() => Promise<void>) | undefined;
  try {
    await mailer.ensureIndexes();
    stop = mailer.startWorker();
    await test({ mongo, smtp, mailer, lines });
  } finally {
    await stop?.();
    await db.close(true);
    await Promise.all([mongo.stop(), smtp.close()]);
  }
}

test('while MongoDB does not answer, sends return within seconds without throwing, and the mail goes out once it is back', () => withFaultyOutbox(async ({ mongo, smtp, mailer, lines }) => {
  mongo.pause();
  expect(await timed(mailer.send(reset('erin@example.com')))).toBeLessThan(5000);
  expect(lines).toContainEqual(expect.objectContaining({ level: 40, msg: 'mail kept in memory until the database answers', template: 'reset-password' }));
  await sleep(1500);
  expect(smtp.messages).toHaveLength(0);

  mongo.resume();
  await smtp.waitFor((mail) => mail.to.includes('erin@example.com'), 20_000);
  await sleep(2500);
  expect(addressed(smtp, 'erin@example.com')).toHaveLength(1);
  expect(linkFrom(smtp.messages[0]!.text, '/reset')).toBe(RESET);
  expect(JSON.stringify(lines)).not.toMatch(/erin|rS4_/);
}), 60_000);

test('a message the database refuses for good is dropped from memory and does not hold up the ones kept behind it', () => withFaultyOutbox(async ({ mongo, smtp, mailer, lines }) => {
  // Over MongoDB's 16 MB document limit: refused whenever it is tried, the database up or not.
  await mailer.send({ to: 'huge@example.com', template: 'reset-password', data: { name: 'x'.repeat(9 * 1024 * 1024), link: RESET, expiresInMinutes: 60 } });
  // Down, not paused: an insert sent to a paused server would still be stored once it resumes.
  await mongo.kill();
  await mailer.send(reset('grace@example.com'));
  expect(lines.filter((line) => line.msg === 'mail kept in memory until the database answers')).toHaveLength(2);
  await sleep(1500);
  await mongo.restart();

  await smtp.waitFor((mail) => mail.to.includes('grace@example.com'), 20_000);
  expect(linkFrom(smtp.messages[0]!.text, '/reset')).toBe(RESET);
  const lost = lines.filter((line) => line.msg === 'mail lost: the database refused to store it');
  expect(lost).toEqual([expect.objectContaining({ level: 50, template: 'reset-password', messageId: expect.stringMatching(/^<.+>$/) })]);
  expect(addressed(smtp, 'huge@example.com')).toHaveLength(0);
  expect(JSON.stringify(lines)).not.toMatch(/huge|grace|rS4_|xxxx/);
}), 60_000);

test('end to end: a password reset asked for while SMTP is down answers at once, and its link arrives once SMTP is back', async () => {
  const smtp = await startSmtpCapture();
  await smtp.stop();
  const server = await startTestServer({ SMTP_URL: smtp.url, ...RETRY });
  try {
    const email = 'frank@example.com';
    await server.services.accounts.create({ email, password: 'violet staple orbit canyon', emailVerified: true });
    const browser = new Browser();
    const page = await browser.get(`${server.issuer}/forgot`);
    const form = readForm(await page.text(), page.url);
    const started = performance.now();
    const answer = await browser.post(form.action, { ...form.fields, email });
    expect(performance.now() - started).toBeLessThan(2000);
    expect(answer.status).toBe(200);
    expect(await answer.text()).toContain('Check your inbox');

    await sleep(1500); // some attempts fail meanwhile
    await smtp.start();
    const mail = await smtp.waitFor((m) => m.to.includes(email) && /reset your password/i.test(m.subject), 15_000);
    const link = linkFrom(mail.text, '/reset');
    expect((await browser.get(link)).status).toBe(200);
    await sleep(2500);
    expect(addressed(smtp, email)).toHaveLength(1);
  } finally {
    await server.close();
    await smtp.close();
  }
}, 60_000);
