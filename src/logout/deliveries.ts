/**
 * The durable queue of back-channel logout deliveries. `enqueue` stores who was signed out of
 * which app (client id, sub, sid: never a token) with one insert, and a worker in each server
 * process POSTs a freshly signed logout token (./token.ts) to the app's backchannel_logout_uri
 * (./send.ts: form-encoded `logout_token`, attemptTimeoutMs at most, no redirects followed, any
 * 2xx accepted). A network error, a timeout or another status is retried with doubling delays
 * (retryBaseMs, 2x, 4x, ... minus up to a quarter), at most maxAttempts times and never after
 * giveUpAfterMs; then the delivery is given up with a log line. Delivered or given up, the record
 * is deleted. Records live in MongoDB, so a restart (or another instance) carries on with them.
 *
 * The design is the mail outbox's (src/mail/outbox.ts): instances share the queue, and each
 * attempt is claimed by inserting a lease `<id>:<attempt>` (a unique-_id insert is atomic on
 * MongoDB and on FerretDB v1, whose findAndModify is not), so one instance makes each attempt; a
 * lease older than LEASE_MS belongs to a worker that died mid-attempt and is taken over under the
 * next number. Delivery is at least once: an RP may see the same logout twice, which is harmless.
 */
import { clientPolicy } from '../oidc/client-metadata.ts';
import type { Collection, Connection } from 'mongoose';
import type { Client, Provider } from 'oidc-provider';
import { uuidv7 } from '../ids.ts';
import { startPolling } from '../workers/polling.ts';
import { logoutUriAllowed } from '../oidc/clients.ts';
import type { Logger } from '../observability/logger.ts';
import { DeliveryFailure, failureReason, postLogoutToken } from './send.ts';
import { signLogoutToken } from './token.ts';

export const DELIVERY_COLLECTION = 'logout_deliveries';
export const DELIVERY_LEASE_COLLECTION = 'logout_delivery_leases';

/** Longer than an attempt and its database writes: only a worker that died holds a lease this long. */
const LEASE_MS = 60_000;
/** Deliveries one pass attempts (in parallel, each bounded by attemptTimeoutMs). */
const BATCH = 20;
const INSERT_WAIT_MS = 2000;
const SWEEP_MS = 60_000;
const MAX_TAKEOVERS = 3;

/** One app to tell that one session (or account) was signed out. */
export interface Logout {
  readonly clientId: string;
  /** The account id, which is the `sub` of its tokens. */
  readonly sub: string;
  /** The session's sid for this client; sent when the client registered backchannel_logout_session_required. */
  readonly sid?: string | undefined;
}

interface DeliveryRecord {
  _id: string;
  clientId: string;
  sub: string;
  sid?: string;
  createdAt: Date;
  /** Attempts started so far, which is also the number of the next attempt's lease. */
  attempts: number;
  nextAttemptAt: Date;
  /** No attempt starts after this. */
  giveUpAt: Date;
}

interface LeaseRecord {
  _id: string;
  until: Date;
  /** Removed after this: the delivery is gone by then, so nobody claims under it again. */
  sweepAfter: Date;
}

export interface DeliveryOptions {
  /** The first retry waits about this long; each later one twice the one before. */
  readonly retryBaseMs: number;
  /** Attempts in all, the first included. */
  readonly maxAttempts: number;
  /** No attempt starts later than this after the sign-out. */
  readonly giveUpAfterMs: number;
  /** The longest one POST may take. */
  readonly attemptTimeoutMs: number;
  /** How often an idle worker looks for due deliveries (enqueue in this process wakes it at once). */
  readonly pollMs: number;
  /** Production sends over https only, whatever a client registered. */
  readonly isProduction: boolean;
}

/** A few attempts over a few minutes: 5 s, 10 s, 20 s, 40 s, 80 s between them. */
export const DEFAULT_DELIVERY_OPTIONS: DeliveryOptions = {
  retryBaseMs: 5000, maxAttempts: 6, giveUpAfterMs: 10 * 60_000, attemptTimeoutMs: 5000, pollMs: 2000, isProduction: true,
};

const isDuplicateKey = (error: unknown) => (error as { code?: unknown }).code === 11000;
const leaseKey = (id: string, attempt: number) => `${id}:${attempt}`;

export class LogoutDeliveries {
  private readonly deliveries: Collection<DeliveryRecord>;
  private readonly leases: Collection<LeaseRecord>;
  private readonly provider: Provider;
  private readonly logger: Logger;
  private readonly options: DeliveryOptions;
  private wake: (() => void) | undefined;
  private lastSweep = 0;

  constructor(connection: Connection, provider: Provider, logger: Logger, options: Partial<DeliveryOptions> = {}) {
    this.deliveries = connection.collection<DeliveryRecord>(DELIVERY_COLLECTION);
    this.leases = connection.collection<LeaseRecord>(DELIVERY_LEASE_COLLECTION);
    this.provider = provider;
    this.logger = logger;
    this.options = { ...DEFAULT_DELIVERY_OPTIONS, ...options };
  }

  async ensureIndexes(): Promise<void> {
    await this.deliveries.createIndex({ nextAttemptAt: 1 });
    await this.leases.createIndex({ sweepAfter: 1 });
  }

  /**
   * Stores the deliveries for the worker. Never rejects: a database that does not take them gets
   * one attempt each from this process instead (logged), since the sign-out itself has happened.
   */
  async enqueue(logouts: readonly Logout[]): Promise<void> {
    if (logouts.length === 0) return;
    const now = Date.now();
    const records: DeliveryRecord[] = logouts.map(({ clientId, sub, sid }) => ({
      _id: uuidv7(now), clientId, sub, ...(sid ? { sid } : {}),
      createdAt: new Date(now), attempts: 0, nextAttemptAt: new Date(now), giveUpAt: new Date(now + this.options.giveUpAfterMs),
    }));
    try {
      await this.insert(records);
      this.wake?.();
    } catch (error) {
      this.logger.warn({ err: { message: (error as Error).message }, deliveries: records.length }, 'back-channel logout: could not queue deliveries; trying each once now');
      for (const record of records) void this.sendOnce(record);
    }
  }

  private async insert(records: DeliveryRecord[]): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the database did not answer within ${INSERT_WAIT_MS} ms`)), INSERT_WAIT_MS);
      timer.unref();
    });
    // Unordered: a duplicate (an insert that timed out and went through after all) skips only itself.
    const inserting = this.deliveries.insertMany(records, { ordered: false }).catch((error: unknown) => {
      if (!isDuplicateKey(error)) throw error;
    });
    await Promise.race([inserting, timeout]).finally(() => clearTimeout(timer));
  }

  /** Deliveries waiting (due or not), for tests and operators. */
  async pending(): Promise<number> {
    return this.deliveries.countDocuments({});
  }

  /** One pass over the due deliveries, as the worker makes it; resolves with how many were delivered. */
  async deliverDue(): Promise<number> {
    return (await this.pass()).delivered;
  }

  /** Delivers due deliveries until the returned function is called; that resolves once the pass in progress is over. */
  startWorker(): () => Promise<void> {
    if (this.wake) throw new Error('the back-channel logout worker is already running');
    const worker = startPolling('back-channel logout worker', this.logger, async ({ woken }) => {
      const { full } = await this.pass();
      return full || woken() ? 0 : this.options.pollMs;
    }, { pollMs: this.options.pollMs });
    this.wake = () => worker.wake();
    return async () => {
      this.wake = undefined;
      await worker.stop();
    };
  }

  private async pass(): Promise<{ full: boolean; delivered: number }> {
    const now = new Date();
    if (now.getTime() - this.lastSweep >= SWEEP_MS) {
      this.lastSweep = now.getTime();
      await this.leases.deleteMany({ sweepAfter: { $lt: now } });
    }
    const due = await this.deliveries.find({ nextAttemptAt: { $lte: now } }, { sort: { nextAttemptAt: 1 }, limit: BATCH }).toArray();
    const outcomes = await Promise.all(due.map((record) => this.attempt(record)));
    return { full: due.length === BATCH, delivered: outcomes.filter((outcome) => outcome === 'delivered').length };
  }

  /** The attempt number this worker now owns, or undefined when another worker has the delivery. */
  private async claim(record: DeliveryRecord): Promise<number | undefined> {
    const sweepAfter = new Date(record.giveUpAt.getTime() + LEASE_MS);
    for (let attempt = record.attempts; attempt < record.attempts + MAX_TAKEOVERS; attempt += 1) {
      const _id = leaseKey(record._id, attempt);
      try {
        await this.leases.insertOne({ _id, until: new Date(Date.now() + LEASE_MS), sweepAfter });
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
        const lease = await this.leases.findOne({ _id });
        if (!lease || lease.until.getTime() > Date.now()) return undefined;
        continue;
      }
      if (attempt > record.attempts) await this.deliveries.updateOne({ _id: record._id }, { $max: { attempts: attempt } });
      return attempt;
    }
    return undefined;
  }

  private async attempt(due: DeliveryRecord): Promise<'delivered' | 'retry' | 'dropped' | 'skipped'> {
    const attempt = await this.claim(due);
    if (attempt === undefined) return 'skipped';
    // The query may predate another worker's attempt: only the current state counts.
    const record = await this.deliveries.findOne({ _id: due._id });
    const now = Date.now();
    if (!record || record.attempts !== attempt || record.nextAttemptAt.getTime() > now) {
      await this.leases.deleteOne({ _id: leaseKey(due._id, attempt) });
      return 'skipped';
    }
    if (record.giveUpAt.getTime() <= now) return this.giveUp(record, attempt, 'no attempt left in time');
    const client = await this.provider.Client.find(record.clientId);
    const uri = client?.backchannelLogoutUri;
    if (!client || !uri) {
      await this.deliveries.deleteOne({ _id: record._id });
      this.logger.info({ deliveryId: record._id, clientId: record.clientId }, 'back-channel logout dropped: the client is gone or no longer has a backchannel_logout_uri');
      return 'dropped';
    }
    if (!logoutUriAllowed(uri, this.options.isProduction)) return this.giveUp(record, attempt, 'backchannel_logout_uri is not allowed here (https only in production)');
    try {
      await this.post(client, uri, record);
    } catch (error) {
      return this.failed(record, attempt, error);
    }
    await this.deliveries.deleteOne({ _id: record._id });
    this.logger.info({ deliveryId: record._id, clientId: record.clientId, attempts: attempt + 1 }, 'back-channel logout delivered');
    return 'delivered';
  }

  private async post(client: Client, uri: string, record: Pick<DeliveryRecord, 'sub' | 'sid'>): Promise<void> {
    const token = await signLogoutToken(this.provider, client, record.sub, record.sid);
    // A client that registered itself (RFC 7591) must not make us POST into our own network.
    const publicOnly = this.options.isProduction && clientPolicy(client).registeredDynamically;
    await postLogoutToken(uri, token, this.options.attemptTimeoutMs, { publicOnly });
  }

  private async failed(record: DeliveryRecord, attempt: number, error: unknown): Promise<'retry' | 'dropped'> {
    const reason = failureReason(error);
    if (!(error instanceof DeliveryFailure)) this.logger.error({ err: error, deliveryId: record._id }, 'back-channel logout: the token could not be built');
    const next = Date.now() + this.retryDelayMs(attempt);
    if (attempt + 1 >= this.options.maxAttempts || next > record.giveUpAt.getTime()) return this.giveUp(record, attempt + 1, reason);
    await this.deliveries.updateOne({ _id: record._id }, { $max: { attempts: attempt + 1 }, $set: { nextAttemptAt: new Date(next) } });
    this.logger.warn({
      deliveryId: record._id, clientId: record.clientId, attempts: attempt + 1, retryInSeconds: Math.round((next - Date.now()) / 1000), reason,
    }, 'back-channel logout not delivered; will retry');
    return 'retry';
  }

  private async giveUp(record: DeliveryRecord, attempts: number, reason: string): Promise<'dropped'> {
    await this.deliveries.deleteOne({ _id: record._id });
    this.logger.error({ deliveryId: record._id, clientId: record.clientId, attempts, reason }, 'back-channel logout given up');
    return 'dropped';
  }

  /** Without the database: one attempt, logged either way. */
  private async sendOnce(record: DeliveryRecord): Promise<void> {
    try {
      const client = await this.provider.Client.find(record.clientId);
      const uri = client?.backchannelLogoutUri;
      if (!client || !uri || !logoutUriAllowed(uri, this.options.isProduction)) return;
      await this.post(client, uri, record);
      this.logger.info({ clientId: record.clientId }, 'back-channel logout delivered without the queue');
    } catch (error) {
      this.logger.error({ clientId: record.clientId, reason: failureReason(error) }, 'back-channel logout given up (the queue was unavailable)');
    }
  }

  /** Doubles from the base, minus up to a quarter, so deliveries that failed together spread out. */
  private retryDelayMs(attempt: number): number {
    return this.options.retryBaseMs * 2 ** Math.min(attempt, 20) * (1 - Math.random() / 4);
  }
}
