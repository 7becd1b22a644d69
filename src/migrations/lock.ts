/**
 * One migration runner at a time, across instances and CLI processes.
 *
 * The lock is a chain of generations in `migration_locks`: `{_id: n, owner, host, pid, until,
 * released?}`. Taking it means inserting generation n+1, where n is the newest one, once that one
 * is released or stale (its `until` has passed). The unique `_id` lets exactly one of several
 * runners insert n+1, on FerretDB as on MongoDB: a unique-key insert is atomic on both, while
 * FerretDB's findAndModify and conditional updates are a read followed by a write. Nothing but
 * the holder ever writes its own generation, and nobody deletes the newest one, so there is no
 * compare-and-delete to get wrong.
 *
 * The holder renews `until` every quarter of the lock's lifetime while it runs. A runner that
 * dies (or loses the database) stops renewing, and after LOCK_TTL_MS the next runner takes over.
 * A holder that finds a newer generation, or fails to renew in time, has lost the lock and starts
 * no further migration; one already running finishes, which is why migrations must be safe to run
 * again (runner.ts). Staleness is judged by the reader's clock against the writer's: the
 * instances' clocks must agree to within a few seconds of the minute a lock lasts.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Collection, Connection } from 'mongoose';
import type { Logger } from '../observability/logger.ts';

export const LOCK_COLLECTION = 'migration_locks';
export const LOCK_TTL_MS = 60_000;
const DUPLICATE_KEY = 11000;
/** Lost insert races in a row before giving up (each one means another runner got ahead). */
const MAX_LOST_RACES = 50;

export interface LockDocument {
  _id: number;
  owner: string;
  host: string;
  pid: number;
  acquiredAt: Date;
  until: Date;
  released?: Date;
}

/** Another runner holds the lock and did not let go within the wait. */
export class MigrationLockBusyError extends Error {
  constructor(holder: LockDocument) {
    super(`another migration runner holds the lock (host ${holder.host}, pid ${holder.pid}, renewed until ${holder.until.toISOString()}); `
      + 'try again once it has finished');
    this.name = 'MigrationLockBusyError';
  }
}

export class MigrationLockLostError extends Error {
  constructor() {
    super('the migration lock was lost (not renewed in time) and another runner may have taken it over; run the migrations again');
    this.name = 'MigrationLockLostError';
  }
}

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === DUPLICATE_KEY;
}

const isLive = (lock: LockDocument | null, now: number): boolean =>
  lock !== null && lock.released === undefined && lock.until.getTime() > now;

export class MigrationLock {
  private readonly locks: Collection<LockDocument>;
  private readonly logger: Logger;
  private readonly generation: number;
  private readonly owner: string;
  private readonly ttlMs: number;
  private heldUntil: number;
  private lost = false;
  private readonly timer: NodeJS.Timeout;

  private constructor(locks: Collection<LockDocument>, logger: Logger, doc: LockDocument, ttlMs: number) {
    this.locks = locks;
    this.logger = logger;
    this.generation = doc._id;
    this.owner = doc.owner;
    this.ttlMs = ttlMs;
    this.heldUntil = doc.until.getTime();
    this.timer = setInterval(() => void this.renew(), Math.max(10, Math.floor(ttlMs / 4)));
    this.timer.unref();
  }

  /**
   * Takes the lock, waiting up to `waitMs` for a live holder to release it (or to go stale);
   * throws MigrationLockBusyError when it is still held after that.
   */
  static async acquire(connection: Connection, logger: Logger, { waitMs, ttlMs = LOCK_TTL_MS }: { waitMs: number; ttlMs?: number }): Promise<MigrationLock> {
    const locks = connection.collection<LockDocument>(LOCK_COLLECTION);
    const deadline = Date.now() + waitMs;
    let waiting = false;
    for (let lostRaces = 0; lostRaces < MAX_LOST_RACES;) {
      const latest = await locks.find({}).sort({ _id: -1 }).limit(1).next();
      const now = Date.now();
      if (latest && isLive(latest, now)) {
        if (now >= deadline) throw new MigrationLockBusyError(latest);
        if (!waiting) logger.info({ host: latest.host, pid: latest.pid }, 'waiting for another migration runner to finish');
        waiting = true;
        await sleep(Math.min(250, deadline - now));
        continue;
      }
      const doc: LockDocument = {
        _id: (latest?._id ?? 0) + 1, owner: randomUUID(), host: hostname(), pid: process.pid, acquiredAt: new Date(now), until: new Date(now + ttlMs),
      };
      try {
        await locks.insertOne(doc);
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
        lostRaces++;
        continue;
      }
      // A runner that read `latest` long ago may insert a generation that was used and deleted
      // since: a newer one existing means the lock is someone else's.
      if (await locks.findOne({ _id: { $gt: doc._id } }, { projection: { _id: 1 } })) {
        await locks.deleteOne({ _id: doc._id, owner: doc.owner }).catch(() => {});
        lostRaces++;
        continue;
      }
      if (latest && latest.released === undefined) {
        logger.warn({ host: latest.host, pid: latest.pid, until: latest.until }, 'took over a stale migration lock (its runner stopped renewing it)');
      }
      // Older generations are history nobody reads; the newest (this one) always stays.
      await locks.deleteMany({ _id: { $lt: doc._id } }).catch(() => {});
      return new MigrationLock(locks, logger, doc, ttlMs);
    }
    throw new Error('could not take the migration lock: other runners kept taking it first');
  }

  /** Throws MigrationLockLostError once the lock may be another runner's. */
  assertHeld(): void {
    if (this.lost || Date.now() >= this.heldUntil) {
      this.lost = true;
      throw new MigrationLockLostError();
    }
  }

  private async renew(): Promise<void> {
    if (this.lost) return;
    const now = Date.now();
    try {
      const renewed = await this.locks.updateOne({ _id: this.generation, owner: this.owner }, { $set: { until: new Date(now + this.ttlMs) } });
      const successor = await this.locks.findOne({ _id: this.generation + 1 }, { projection: { _id: 1 } });
      if (renewed.matchedCount === 0 || successor) this.lost = true;
      else this.heldUntil = now + this.ttlMs;
    } catch (error) {
      this.logger.warn({ err: error }, 'renewing the migration lock failed; retrying');
    }
  }

  /** Lets the next runner in at once (a crashed runner's lock goes stale instead). */
  async release(): Promise<void> {
    clearInterval(this.timer);
    if (this.lost) return;
    this.lost = true;
    await this.locks.updateOne({ _id: this.generation, owner: this.owner }, { $set: { released: new Date() } });
  }
}
