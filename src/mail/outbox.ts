/**
 * The durable mail outbox. `enqueue` stores a rendered message with one insert and returns, so no
 * request waits on SMTP; a worker in each server process sends due messages, retries transient
 * failures with exponential backoff, and drops a message once its links have expired or once the
 * SMTP server refused it for good (5xx). Its recipient and content, live links included, are
 * stored sealed (./sealed.ts), and a sent message loses them at once; the rest of it stays until
 * its expiry, so a late copy of it (see `enqueue`) is a duplicate key. A pass ends at the first
 * failure of the SMTP server as a whole (unreachable, silent, refusing our login): the other
 * messages would only wait out the same timeout. The worker then backs off as a message would.
 *
 * Instances share the outbox. Each attempt at a message is claimed by inserting a lease
 * `<id>:<attempt>`: a unique-key insert is atomic on MongoDB and on FerretDB v1 (whose
 * findAndModify is a read then a write), so one instance wins each attempt. A lease older than
 * LEASE_MS is the claim of a worker that died mid-attempt: the next instance takes the attempt
 * over under the next number. Delivery is at least once: a worker that dies after the SMTP server
 * accepted a message but before marking it sent leaves it to be sent again, with the same Message-ID.
 */
import { startPolling } from '../workers/polling.ts';
import type { Collection, Connection } from 'mongoose';
import { ServiceUnavailableError } from '../http/unavailable.ts';
import { uuidv7 } from '../ids.ts';
import type { Logger } from '../observability/logger.ts';
import { MemoryBacklog } from './backlog.ts';
import type { Sealed, Sealer } from './sealed.ts';
import { failureFields, isPermanentRefusal, isServerFailure, type OutgoingMail, type Transport } from './transport.ts';

export const OUTBOX_COLLECTION = 'mail_outbox';
export const LEASE_COLLECTION = 'mail_outbox_leases';

/** The longest one attempt may take: it is aborted then, and counts as a transient failure. */
const ATTEMPT_MS = 60_000;
/** Longer than an attempt and its database writes: only a worker that died holds a lease this long. */
const LEASE_MS = 5 * 60_000;
/** Messages one pass takes on; another pass follows at once when there were that many. */
const BATCH = 10;
/** How long `enqueue` waits for the database before keeping the message in memory instead. */
const INSERT_WAIT_MS = 2000;
const SWEEP_MS = 60_000;
/** Leases of dead workers one claim may step past. */
const MAX_TAKEOVERS = 3;

/** What is sealed: whom it goes to and what it says. */
type Content = Pick<OutgoingMail, 'to' | 'subject' | 'text' | 'html' | 'link'>;

interface OutboxRecord extends Pick<OutgoingMail, 'messageId' | 'template'> {
  _id: string;
  /** Content, sealed with the message id; unset once sent. */
  sealed?: Sealed;
  createdAt: Date;
  /** When its links stop working: the message is dropped then, sent or not. */
  expiresAt: Date;
  /** Unset once sent. */
  nextAttemptAt?: Date;
  /** Attempts started so far, which is also the number of the next attempt's lease. */
  attempts: number;
  sentAt?: Date;
}

interface LeaseRecord {
  /** leaseKey(message id, attempt). */
  _id: string;
  /** Until then the attempt belongs to the worker that inserted the lease. */
  until: Date;
  /** Leases are removed once their message is past its expiry (and so is never sent again). */
  messageExpiresAt: Date;
}

type Due = Pick<OutboxRecord, '_id' | 'attempts' | 'expiresAt'>;
/** `unreachable`: a retry too, and the SMTP server as a whole failed, so the pass ends. */
type Outcome = 'sent' | 'retry' | 'unreachable' | 'dropped' | 'skipped';
interface PassResult {
  /** As many messages were due as one pass takes: another may be waiting. */
  readonly full: boolean;
  readonly sent: number;
  readonly unreachable: boolean;
}

export interface NewMail extends Omit<OutgoingMail, 'messageId'> {
  /** How long the message is worth sending (its links' lifetime). */
  readonly lifetimeMs: number;
}

export interface OutboxOptions {
  /** Delays between attempts double from retryBaseSeconds up to retryMaxSeconds. */
  readonly retryBaseSeconds: number;
  readonly retryMaxSeconds: number;
  /** The domain part of Message-IDs. */
  readonly host: string;
  /** Seals the content at rest. */
  readonly sealer: Sealer;
}

export const leaseKey = (messageId: string, attempt: number) => `${messageId}:${attempt}`;

const isDuplicateKey = (error: unknown) => (error as { code?: unknown }).code === 11000;

/**
 * Rejects after `ms` as unavailable (the backlog keeps retrying those); the operation itself goes
 * on (a later insert of the same _id is a duplicate).
 */
function within<T>(ms: number, operation: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ServiceUnavailableError(`the database did not answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([operation, timeout]).finally(() => clearTimeout(timer));
}

export class Outbox {
  private readonly messages: Collection<OutboxRecord>;
  private readonly leases: Collection<LeaseRecord>;
  private readonly transport: Transport;
  private readonly logger: Logger;
  private readonly options: OutboxOptions;
  private readonly backlog: MemoryBacklog<OutboxRecord>;
  /** Set while this process runs a worker: starts a pass now. */
  private wake: (() => void) | undefined;
  private lastSweep = 0;

  constructor(connection: Connection, transport: Transport, logger: Logger, options: OutboxOptions) {
    this.messages = connection.collection<OutboxRecord>(OUTBOX_COLLECTION);
    this.leases = connection.collection<LeaseRecord>(LEASE_COLLECTION);
    this.transport = transport;
    this.logger = logger;
    this.options = options;
    this.backlog = new MemoryBacklog<OutboxRecord>(logger, {
      store: (record) => this.insert(record),
      expired: (record) => this.logExpired(record),
      stored: () => this.wake?.(),
    });
  }

  async ensureIndexes(): Promise<void> {
    await this.messages.createIndex({ nextAttemptAt: 1 });
    await this.messages.createIndex({ expiresAt: 1 });
    await this.leases.createIndex({ messageExpiresAt: 1 });
  }

  /**
   * Stores the message for the worker. Never rejects and waits at most INSERT_WAIT_MS: while the
   * database is away the message is kept in memory and stored once it answers. The insert that
   * timed out may still go through: the copy from memory then has the same _id and is refused.
   */
  async enqueue(mail: NewMail): Promise<void> {
    const now = Date.now();
    const id = uuidv7(now);
    const { lifetimeMs, template, to, subject, text, html, link } = mail;
    const content: Content = { to, subject, text, html, ...(link === undefined ? {} : { link }) };
    const record: OutboxRecord = {
      _id: id, messageId: `<${id}@${this.options.host}>`, template, sealed: this.options.sealer.seal(id, JSON.stringify(content)),
      createdAt: new Date(now), expiresAt: new Date(now + lifetimeMs), nextAttemptAt: new Date(now), attempts: 0,
    };
    try {
      await this.insert(record);
      this.wake?.();
    } catch (error) {
      this.backlog.keep(record, error);
    }
  }

  /** A duplicate key is an insert that timed out and went through after all. */
  private async insert(record: OutboxRecord): Promise<void> {
    try {
      await within(INSERT_WAIT_MS, this.messages.insertOne(record));
    } catch (error) {
      if (!isDuplicateKey(error)) throw error;
    }
  }

  /** One pass over the due messages, as the worker makes it; resolves with how many this call sent. */
  async deliverDue(): Promise<number> {
    return (await this.pass()).sent;
  }

  /**
   * Sends due messages until the returned function is called; that resolves once the pass in
   * progress is over. Timers are unref'd: the worker never keeps a process alive. While the SMTP
   * server fails as a whole, passes are spaced like a message's retries and new mail waits for
   * the next one.
   */
  startWorker(): () => Promise<void> {
    if (this.wake) throw new Error('the mail worker is already running');
    const pollMs = Math.min(this.options.retryBaseSeconds, 5) * 1000;
    /** Passes in a row that the SMTP server failed. */
    let unreachable = 0;
    const worker = startPolling('mail worker', this.logger, async ({ stopped, woken }) => {
      const { full, unreachable: failed } = await this.pass(stopped);
      if (failed) {
        const delayMs = this.retryDelayMs(unreachable);
        // Once per outage: each failed attempt logs its own line too.
        if (unreachable === 0) this.logger.warn({ retryInSeconds: Math.round(delayMs / 1000) }, 'mail worker: the SMTP server is unavailable; backing off');
        unreachable += 1;
        return delayMs;
      }
      if (unreachable > 0) this.logger.info('mail worker: the SMTP server answers again');
      unreachable = 0;
      return full || woken() ? 0 : pollMs;
    }, {
      pollMs,
      // Backing off from the SMTP server: the next pass takes the new message along.
      mayWake: () => unreachable === 0,
    });
    this.wake = () => worker.wake();
    return async () => {
      this.wake = undefined;
      await worker.stop();
    };
  }

  private async pass(stopped = () => false): Promise<PassResult> {
    const now = new Date();
    if (now.getTime() - this.lastSweep >= SWEEP_MS) {
      this.lastSweep = now.getTime();
      await this.messages.deleteMany({ sentAt: { $exists: true }, expiresAt: { $lt: now } });
      await this.leases.deleteMany({ messageExpiresAt: { $lt: now } });
    }
    const due = await this.messages.find({ nextAttemptAt: { $lte: now } }, {
      sort: { nextAttemptAt: 1 }, limit: BATCH, projection: { _id: 1, attempts: 1, expiresAt: 1 },
    }).toArray() as Due[];
    let sent = 0;
    for (const message of due) {
      if (stopped()) break;
      const outcome = await this.attempt(message);
      if (outcome === 'sent') sent += 1;
      // The rest were not tried, so they keep their attempts and their time.
      if (outcome === 'unreachable') return { full: false, sent, unreachable: true };
    }
    return { full: due.length === BATCH, sent, unreachable: false };
  }

  /** The attempt number this worker now owns, or undefined when another worker has the message. */
  private async claim(message: Due): Promise<number | undefined> {
    for (let attempt = message.attempts; attempt < message.attempts + MAX_TAKEOVERS; attempt += 1) {
      const _id = leaseKey(message._id, attempt);
      try {
        await this.leases.insertOne({ _id, until: new Date(Date.now() + LEASE_MS), messageExpiresAt: message.expiresAt });
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
        const lease = await this.leases.findOne({ _id });
        // Live (or gone again, which only a finished attempt does): not ours to send.
        if (!lease || lease.until.getTime() > Date.now()) return undefined;
        continue;
      }
      // Taking over a dead worker's attempt: the ones before this number must no longer count.
      if (attempt > message.attempts) await this.messages.updateOne({ _id: message._id }, { $max: { attempts: attempt } });
      return attempt;
    }
    return undefined;
  }

  private async attempt(due: Due): Promise<Outcome> {
    const attempt = await this.claim(due);
    if (attempt === undefined) return 'skipped';
    // The query may predate another worker's attempt: only the current state counts.
    const message = await this.messages.findOne({ _id: due._id });
    const now = Date.now();
    if (!message?.nextAttemptAt || message.attempts !== attempt || message.nextAttemptAt.getTime() > now) {
      // Nothing was done under this lease, and the state above refuses it to anyone else too.
      await this.leases.deleteOne({ _id: leaseKey(due._id, attempt) });
      return 'skipped';
    }
    if (message.expiresAt.getTime() <= now) {
      await this.messages.deleteOne({ _id: message._id });
      this.logExpired(message);
      return 'dropped';
    }
    const content = this.open(message);
    if (!content) {
      await this.messages.deleteOne({ _id: message._id });
      this.logger.warn({ template: message.template, messageId: message.messageId }, 'mail cannot be unsealed with the configured keys; dropped');
      return 'dropped';
    }
    try {
      await this.transport({ messageId: message.messageId, template: message.template, ...content }, AbortSignal.timeout(ATTEMPT_MS));
    } catch (error) {
      return this.failed(message, attempt, error);
    }
    // The lease stays until the message would have expired: a late claim finds it sent.
    await this.messages.updateOne({ _id: message._id }, { $set: { sentAt: new Date() }, $unset: { nextAttemptAt: '', sealed: '' } });
    return 'sent';
  }

  /** Undefined when no configured key opens it, or it was not sealed by this outbox. */
  private open(message: OutboxRecord): Content | undefined {
    const plaintext = this.options.sealer.open(message._id, message.sealed);
    return plaintext === undefined ? undefined : JSON.parse(plaintext) as Content;
  }

  private async failed(message: OutboxRecord, attempt: number, error: unknown): Promise<Outcome> {
    const { template, messageId } = message;
    if (isPermanentRefusal(error)) {
      await this.messages.deleteOne({ _id: message._id });
      this.logger.error({ template, messageId, ...failureFields(error) }, 'mail refused by the SMTP server; dropped');
      return 'dropped';
    }
    // Never later than the expiry, so an expired message is dropped on time.
    const next = Math.min(Date.now() + this.retryDelayMs(attempt), message.expiresAt.getTime());
    await this.messages.updateOne({ _id: message._id }, { $max: { attempts: attempt + 1 }, $set: { nextAttemptAt: new Date(next) } });
    this.logger.warn({
      template, messageId, attempts: attempt + 1, retryInSeconds: Math.max(0, Math.round((next - Date.now()) / 1000)), ...failureFields(error),
    }, 'mail not sent; will retry');
    return isServerFailure(error) ? 'unreachable' : 'retry';
  }

  /** Doubles from the base up to the max, minus up to a quarter, so instances that failed together spread out. */
  private retryDelayMs(attempt: number): number {
    const { retryBaseSeconds, retryMaxSeconds } = this.options;
    const nominal = Math.min(retryMaxSeconds, retryBaseSeconds * 2 ** Math.min(attempt, 30)) * 1000;
    return nominal * (1 - Math.random() / 4);
  }

  /** Neither the recipient nor the link: the template and the message id say enough. */
  private logExpired({ template, messageId }: OutboxRecord): void {
    this.logger.warn({ template, messageId }, 'mail expired before it could be sent; dropped');
  }
}
