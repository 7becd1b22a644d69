/**
 * Removes expired documents on servers without TTL indexes (FerretDB v1), in small bounded steps.
 *
 * Each tick, one instance at a time (by a lock document), deletes expired documents batch by
 * batch until its wall-time budget is spent, then hands the rest to the next tick. Collections are
 * taken round-robin: a tick that runs out of budget in one collection starts the next tick at the
 * collection after it, so a huge backlog in one cannot starve the others.
 *
 * What it costs on FerretDB v1.24 (SQLite; see scripts/bench/sweep.ts): FerretDB pushes only a
 * filter that is `{_id: <string>}` and nothing else down to its index; everything else is a scan
 * that decodes every document it passes (about 0.1 ms each). Hence:
 * - Finding: `expiresAt < cutoff` is a scan that stops as soon as a batch is full. SQLite scans
 *   in insertion order and old rows are the ones that expire first, so a batch usually costs about
 *   its own size. Learning that a collection has nothing more to sweep costs one scan of all its
 *   live documents in one command (7 s at 50,000), which no budget can cut short; `revisitMs`
 *   limits how often that is paid.
 * - Deleting: one `delete` command with one `{q: {_id}, limit: 1}` statement per id (bulkWrite of
 *   deleteOne) is index-backed, about 0.45 ms a document, whatever the collection's size.
 *   `deleteMany({_id: {$in: ids}})` is not pushed down: a full scan per batch (2 to 2.6 s at
 *   20,000 documents), cheaper only for collections under about four batches. Each statement
 *   is its own short SQLite write, so writers are never queued behind the sweep, unlike the old
 *   single deleteMany (one write holding every expired id, which also fails outright past
 *   32,766 ids: "too many SQL variables").
 *
 * A document whose expiry is pushed forward between the find and the delete (a session saved
 * again with a later expiry) must survive:
 * - Where the server keeps `_id` index use with a second condition (MongoDB), the delete filter
 *   re-checks `expiresAt < cutoff`, which is atomic per document there.
 * - FerretDB loses the index with any second condition (a scan per statement, measured 0.1 s
 *   per id at 100,000 documents), and its delete is a read followed by a delete by `_id`
 *   anyway, so a re-check would not be atomic either. There the delete is by `_id` alone and
 *   safety comes from the grace period: only documents expired more than `graceMs` ago are
 *   found. A writer that saves such a document again must have read it while it was still live,
 *   more than `graceMs` before (the cutoff is taken after the tick starts, and every batch is
 *   found after that), so the overlap needs a request that spends longer than `graceMs` (less
 *   any clock skew between instances) between reading and writing: default 10 minutes, twice
 *   the largest REQUEST_TIMEOUT_SECONDS.
 * A document saved under an `_id` derived from a key rather than a random one (the adapter's copy
 * of the grant an account gave a client, `for:[account,client]`) can also be written afresh by a
 * new consent after the old one expired, between the find and the delete; the copy is then
 * deleted, and the next sign-in asks for consent again: it fails closed.
 * Reads honour expiry themselves, so sweeping later than the expiry changes nothing visible.
 *
 * The lock `{_id: 'expiry-sweep', owner, until}` is taken by a unique insert, atomic on FerretDB
 * too. A lock past `until` is taken over by deleting exactly that stale document and inserting
 * again. On FerretDB that delete is a read then a delete by `_id`, so two instances taking over
 * the same stale lock can both succeed (the second's delete removes the first's fresh lock) and
 * sweep at the same time until the next renewal, where the loser's `{_id, owner}` update matches
 * nothing and it stands down. That overlap is harmless: deleting expired documents twice is
 * idempotent. On MongoDB the conditional delete is atomic and only one takes over.
 */
import type { Collection, mongo } from 'mongoose';

export interface SweeperOptions {
  /** The collections to sweep; documents carry an optional `expiresAt: Date`. */
  collections: () => Collection[];
  /** Where the one-sweeper-at-a-time lock lives. */
  locks: Collection;
  /** This instance's id (random per process). */
  owner: string;
  /** Wall time per tick after which no new batch starts (default 50). */
  budgetMs?: number;
  /** Documents found and deleted per batch (default 500). */
  batchSize?: number;
  /** How long a held lock lasts without renewal (default 3 minutes, or 3 intervals if longer). */
  lockTtlMs?: number;
  /** Only documents expired longer ago than this are swept (default 10 minutes; see above). */
  graceMs?: number;
  /** A collection swept to its end is not scanned again for this long (default 0: every tick). */
  revisitMs?: number;
  /** Re-check `expiresAt` in the delete filter (default: everywhere but FerretDB; see above). */
  recheckExpiry?: boolean;
  now?: () => number;
}

export interface TickResult {
  removed: number;
  elapsedMs: number;
  ranOutOfBudget: boolean;
  lockHeld: boolean;
}

interface LockDocument { _id: string; owner: string; until: Date }
interface ExpiringDocument { _id: unknown; expiresAt?: Date }

export const LOCK_ID = 'expiry-sweep';
const DUPLICATE_KEY = 11000;
const DEFAULT_LOCK_TTL_MS = 3 * 60_000;

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === DUPLICATE_KEY;
}

export class ExpirySweeper {
  private readonly options: SweeperOptions;
  private readonly budgetMs: number;
  private readonly batchSize: number;
  private readonly graceMs: number;
  private readonly revisitMs: number;
  private readonly now: () => number;
  private lockTtlMs: number;
  private recheckExpiry: boolean | undefined;
  /** Index of the collection the next tick starts with. */
  private position = 0;
  /** Collection name -> time (by `now`) before which it is not scanned again. */
  private readonly restingUntil = new Map<string, number>();
  private inFlight: Promise<TickResult> | undefined;
  /** Until when this instance believes it holds the lock (by `now`); 0 when it does not. */
  private heldUntil = 0;

  constructor(options: SweeperOptions) {
    this.options = options;
    this.budgetMs = options.budgetMs ?? 50;
    this.batchSize = Math.max(1, options.batchSize ?? 500);
    this.lockTtlMs = options.lockTtlMs ?? DEFAULT_LOCK_TTL_MS;
    this.graceMs = options.graceMs ?? 10 * 60_000;
    this.revisitMs = options.revisitMs ?? 0;
    this.recheckExpiry = options.recheckExpiry;
    this.now = options.now ?? Date.now;
  }

  /** One bounded sweep. Never overlaps another: a call during a running tick gets that tick. */
  tick(): Promise<TickResult> {
    this.inFlight ??= this.runTick().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  /**
   * Ticks every intervalSeconds; a tick still running when the next is due means that one is
   * skipped. Errors go to onError, never out of the timer. The returned stop waits for a running
   * tick and releases the lock.
   */
  start(intervalSeconds: number, onError: (error: unknown) => void): () => Promise<void> {
    if (this.options.lockTtlMs === undefined) this.lockTtlMs = Math.max(DEFAULT_LOCK_TTL_MS, 3 * intervalSeconds * 1000);
    const timer = setInterval(() => {
      if (this.inFlight) return;
      this.tick().catch(onError);
    }, intervalSeconds * 1000);
    timer.unref();
    let stopped: Promise<void> | undefined;
    return () => {
      stopped ??= (async () => {
        clearInterval(timer);
        await this.inFlight?.catch(() => {});
        await this.release().catch(onError);
      })();
      return stopped;
    };
  }

  private async runTick(): Promise<TickResult> {
    const tickStart = performance.now();
    const elapsed = () => performance.now() - tickStart;
    const nowMs = this.now();
    if (!(await this.acquire(nowMs))) return { removed: 0, elapsedMs: elapsed(), ranOutOfBudget: false, lockHeld: false };
    this.recheckExpiry ??= !(await this.isFerretDb());

    const collections = this.options.collections();
    const cutoff = new Date(nowMs - this.graceMs);
    let removed = 0;
    let ranOutOfBudget = false;
    const start = this.position % Math.max(1, collections.length);
    let sweptAny = false;
    for (let step = 0; step < collections.length; step += 1) {
      const index = (start + step) % collections.length;
      const collection = collections[index]!;
      if ((this.restingUntil.get(collection.collectionName) ?? 0) > nowMs) continue;
      // The first collection always gets a batch, so a slow lock round trip cannot stall the sweep.
      if (sweptAny && elapsed() >= this.budgetMs) {
        this.position = index;
        ranOutOfBudget = true;
        break;
      }
      sweptAny = true;
      const swept = await this.sweepCollection(collection, cutoff, () => elapsed() >= this.budgetMs);
      removed += swept.removed;
      if (swept.finished) {
        if (this.revisitMs > 0) this.restingUntil.set(collection.collectionName, nowMs + this.revisitMs);
      } else {
        // The rest of this collection waits for its next turn; the others go first.
        this.position = (index + 1) % collections.length;
        ranOutOfBudget = true;
        break;
      }
    }
    return { removed, elapsedMs: elapsed(), ranOutOfBudget, lockHeld: true };
  }

  /**
   * Batches from one cursor (a fresh find per batch would scan the live documents in front again
   * on FerretDB); `finished` when the collection had nothing more expired.
   */
  private async sweepCollection(
    collection: Collection, cutoff: Date, spent: () => boolean,
  ): Promise<{ removed: number; finished: boolean }> {
    const expired = collection.find<ExpiringDocument>(
      { expiresAt: { $lt: cutoff } },
      { projection: { _id: 1 }, batchSize: this.batchSize },
    );
    let removed = 0;
    try {
      for (let first = true; first || !spent(); first = false) {
        const ids: unknown[] = [];
        while (ids.length < this.batchSize && (await expired.hasNext())) ids.push((await expired.next())!._id);
        if (ids.length > 0) removed += await this.remove(collection, ids, cutoff);
        if (ids.length < this.batchSize) return { removed, finished: true };
      }
      return { removed, finished: false };
    } finally {
      await expired.close().catch(() => {}); // a failing server: the error that matters is thrown already
    }
  }

  private async remove(collection: Collection, ids: unknown[], cutoff: Date): Promise<number> {
    const filter = (_id: unknown): mongo.Document => (this.recheckExpiry ? { _id, expiresAt: { $lt: cutoff } } : { _id });
    const result = await collection.bulkWrite(ids.map((_id) => ({ deleteOne: { filter: filter(_id) } })), { ordered: false });
    return result.deletedCount;
  }

  /** FerretDB names itself in an explain's serverInfo (asked through a collection, which is all we have). */
  private async isFerretDb(): Promise<boolean> {
    const plan = await this.locks.find({ _id: LOCK_ID }).explain();
    const serverInfo = (plan as { serverInfo?: Record<string, unknown> }).serverInfo;
    return serverInfo !== undefined && 'ferretdbVersion' in serverInfo;
  }

  private get locks(): Collection<LockDocument> {
    return this.options.locks as unknown as Collection<LockDocument>;
  }

  /** Takes, keeps or takes over the lock; true when this instance may sweep now. */
  private async acquire(nowMs: number): Promise<boolean> {
    const until = new Date(nowMs + this.lockTtlMs);
    const { owner } = this.options;
    if (this.heldUntil > nowMs) {
      const renewed = await this.locks.updateOne({ _id: LOCK_ID, owner }, { $set: { until } });
      if (renewed.matchedCount === 1) return this.held(until);
    }
    this.heldUntil = 0;
    if (await this.insertLock(until)) return this.held(until);
    const current = await this.locks.findOne({ _id: LOCK_ID });
    if (current === null) return (await this.insertLock(until)) && this.held(until);
    if (current.until.getTime() > nowMs) {
      if (current.owner !== owner) return false;
      // Ours, from before a restart of this object: renew it.
      const renewed = await this.locks.updateOne({ _id: LOCK_ID, owner }, { $set: { until } });
      return renewed.matchedCount === 1 && this.held(until);
    }
    // Expired: remove exactly that stale lock, then compete for a fresh one by insert.
    await this.locks.deleteOne({ _id: LOCK_ID, owner: current.owner, until: current.until });
    return (await this.insertLock(until)) && this.held(until);
  }

  private held(until: Date): true {
    this.heldUntil = until.getTime();
    return true;
  }

  private async insertLock(until: Date): Promise<boolean> {
    try {
      await this.locks.insertOne({ _id: LOCK_ID, owner: this.options.owner, until });
      return true;
    } catch (error) {
      if (isDuplicateKey(error)) return false;
      throw error;
    }
  }

  /** Gives the lock up if this instance still holds it, so another may sweep at once. */
  async release(): Promise<void> {
    if (this.heldUntil === 0) return;
    this.heldUntil = 0;
    await this.locks.deleteOne({ _id: LOCK_ID, owner: this.options.owner });
  }
}
