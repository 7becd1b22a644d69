/**
 * Where the limits are counted: in Redis, shared by every instance, with the same limit in this
 * process's memory for when Redis fails. A circuit breaker stops asking a Redis that keeps failing
 * (a hung one would otherwise cost every request its command timeout), probes it in the
 * background, and adds what memory counted meanwhile to Redis before asking it again, so a lock
 * taken during an outage still holds afterwards, on every instance.
 */
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Limit } from '../config.ts';
import type { Logger } from '../observability/logger.ts';

/** The operations RateLimits and Lockout use, answered by Redis or by memory as LimiterStore decides. */
export interface Limiter {
  consume(key: string, points?: number): Promise<RateLimiterRes>;
  penalty(key: string, points?: number): Promise<RateLimiterRes>;
  reward(key: string, points?: number): Promise<RateLimiterRes>;
  get(key: string): Promise<RateLimiterRes | null>;
  block(key: string, seconds: number): Promise<RateLimiterRes>;
  delete(key: string): Promise<boolean>;
}

/** 'local': Redis is configured but not used for now, so each instance counts on its own. */
export type LimiterState = 'shared' | 'local' | 'not configured';

/**
 * Redis failures in a row (timeouts, refused connections) after which it is no longer asked: the
 * first, so a hung Redis costs one command timeout, not one per request. Opening is cheap to undo:
 * the probe closes the circuit within a second of Redis answering, merging what memory counted.
 */
const FAILURES_TO_OPEN = 1;
const PROBE_INTERVAL_MS = 1000;
/** Bounds every probe and merge step by itself, whatever timeout the Redis client has. */
const REDIS_DEADLINE_MS = 1000;
const MERGE_BATCH = 100;

/**
 * Adds what memory counted for a key to the key in Redis (ARGV: points to add, least value to
 * end with, ms the key must still live, 1 when it was deleted in memory so Redis's count goes).
 * The key keeps the longer of its Redis window and the one left in memory, so nothing counted on
 * either side ends early; a refund alone does not create a key.
 */
const MERGE_SCRIPT = `
local add, floor, ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local current = redis.call('get', KEYS[1])
if ARGV[4] == '1' then current = false end
if not current then
  if ms <= 0 or (add <= 0 and floor <= 0) then return redis.call('del', KEYS[1]) end
  return redis.call('set', KEYS[1], math.max(add, floor), 'PX', ms)
end
local ttl = math.max(redis.call('pttl', KEYS[1]), ms)
return redis.call('set', KEYS[1], math.max(tonumber(current) + add, floor), 'PX', ttl)
`;

interface MemoryRecord { value: number; expiresAt: number | null }

/** What memory holds for a key beyond what Redis was already given. */
interface Change {
  key: string;
  add: number;
  floor: number;
  ms: number;
  /** The record as it was when the change was taken, to merge only what is new the next time. */
  record?: MemoryRecord;
  /** Set when the key was deleted in memory: which deletion this change carries. */
  deletion?: number;
}

async function withDeadline<T>(promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`redis did not answer within ${REDIS_DEADLINE_MS} ms`)), REDIS_DEADLINE_MS);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

interface Circuit {
  readonly open: () => boolean;
  readonly succeeded: () => void;
  readonly failed: () => void;
}

/** One limit in Redis, with the same limit in memory for when Redis fails or the circuit is open. */
class SharedLimiter implements Limiter {
  private readonly shared: RateLimiterRedis;
  private readonly local: RateLimiterMemory;
  private readonly circuit: Circuit;
  /** Keys blocked in memory: their value is a least value for Redis, not points to add. */
  private readonly blocked = new Set<string>();
  /** Keys deleted in memory, each with a number that tells this deletion from a later one. */
  private readonly deleted = new Map<string, number>();
  private deletions = 0;
  /** The records Redis was given, so that a merge retried after a failure adds only what is new. */
  private readonly merged = new Map<string, MemoryRecord>();

  constructor(shared: RateLimiterRedis, local: RateLimiterMemory, circuit: Circuit) {
    this.shared = shared;
    this.local = local;
    this.circuit = circuit;
  }

  consume(key: string, points = 1) { return this.run((limiter) => limiter.consume(key, points)); }
  penalty(key: string, points = 1) { return this.run((limiter) => limiter.penalty(key, points)); }
  reward(key: string, points = 1) { return this.run((limiter) => limiter.reward(key, points)); }
  get(key: string) { return this.run((limiter) => limiter.get(key)); }
  block(key: string, seconds: number) { return this.run((limiter) => limiter.block(key, seconds), () => this.blocked.add(key)); }
  delete(key: string) {
    return this.run((limiter) => limiter.delete(key), () => {
      this.blocked.delete(key);
      this.deleted.set(key, ++this.deletions);
    });
  }

  private async run<T>(operation: (limiter: RateLimiterAbstract) => Promise<T>, countedLocally?: () => void): Promise<T> {
    if (!this.circuit.open()) {
      try {
        const result = await operation(this.shared);
        this.circuit.succeeded();
        return result;
      } catch (error) {
        // Over the limit, rate-limiter-flexible rejects with its result: Redis did answer.
        if (error instanceof RateLimiterRes) {
          this.circuit.succeeded();
          throw error;
        }
        this.circuit.failed();
      }
    }
    countedLocally?.();
    return operation(this.local);
  }

  /** Gives Redis what memory counted since the last merge. */
  async merge(redis: Redis): Promise<void> {
    const changes = this.changes();
    for (let i = 0; i < changes.length; i += MERGE_BATCH) {
      await withDeadline(Promise.all(changes.slice(i, i + MERGE_BATCH).map(async (change) => {
        await redis.eval(MERGE_SCRIPT, 1, this.shared.getKey(change.key), change.add, change.floor, Math.ceil(change.ms), change.deletion ? 1 : 0);
        if (change.record) this.merged.set(change.key, change.record);
        if (change.deletion !== undefined && this.deleted.get(change.key) === change.deletion) this.deleted.delete(change.key);
      })));
    }
  }

  /** Drops the memory copies Redis now holds; whatever was counted after their merge stays for the next one. */
  prune(): void {
    const live = this.records();
    for (const [key, merged] of this.merged) {
      const record = live.get(key);
      if (record && (record.value !== merged.value || record.expiresAt !== merged.expiresAt)) continue;
      if (record) void this.local.delete(key);
      this.merged.delete(key);
      this.blocked.delete(key);
    }
    for (const key of this.blocked) if (!live.has(key)) this.blocked.delete(key);
  }

  private records(): Map<string, MemoryRecord> {
    return new Map(this.local.dump().storage.map(({ key, value, expiresAt }) => [String(key), { value, expiresAt }]));
  }

  private changes(): Change[] {
    const now = Date.now();
    const changes: Change[] = [];
    const live = this.records();
    for (const [key, record] of live) {
      // Every window and block here has an end (durations are never 0): past it, nothing to add.
      const ms = record.expiresAt === null ? 0 : record.expiresAt - now;
      if (ms <= 0) continue;
      const before = this.merged.get(key);
      const sameWindow = before !== undefined && before.expiresAt === record.expiresAt;
      if (sameWindow && before.value === record.value && !this.deleted.has(key)) continue;
      const blocked = this.blocked.has(key);
      const add = blocked ? 0 : record.value - (sameWindow ? before.value : 0);
      changes.push({ key, add, floor: blocked ? record.value : 0, ms, record, deletion: this.deleted.get(key) });
    }
    for (const [key, deletion] of this.deleted) {
      if (!live.has(key)) changes.push({ key, add: 0, floor: 0, ms: 0, deletion });
    }
    return changes;
  }
}

/**
 * Makes the limiters for RateLimits and Lockout: in Redis with a memory fallback, or in memory
 * only without Redis. A circuit breaker stops asking a failing Redis (a hung one would cost every
 * request the client's command timeout) and probes it in the background; once it answers, what
 * memory counted meanwhile (failures, running locks) is added to Redis before it is asked again,
 * so a lock taken during the outage holds on every instance afterwards.
 */
export class LimiterStore {
  private readonly redis: Redis | undefined;
  private readonly logger: Logger;
  private readonly limiters: SharedLimiter[] = [];
  private failures = 0;
  /** Open: Redis is not asked, every limit is counted in memory. */
  private open = false;
  /** A Redis error left counts in memory that Redis has not been given yet. */
  private unmerged = false;
  private merging = false;
  private probing = false;
  private probeTimer: NodeJS.Timeout | undefined;
  private mergeFailing = false;
  private closed = false;
  private readonly circuit: Circuit = { open: () => this.open, succeeded: () => this.succeeded(), failed: () => this.failed() };
  // ioredis reconnecting after a restart: probe at once rather than at the next tick.
  private readonly onReady = () => void this.probe();

  constructor(redis: Redis | undefined, logger: Logger) {
    this.redis = redis;
    this.logger = logger;
    if (!redis) logger.warn('rate limits and lockout are kept in this process only (no Redis; development only)');
    redis?.on('ready', this.onReady);
  }

  /** For health checks: whether limits are shared between instances right now. */
  state(): LimiterState {
    if (!this.redis) return 'not configured';
    // Not connected: every operation fails over to memory at once, circuit open or not.
    return this.open || this.redis.status !== 'ready' ? 'local' : 'shared';
  }

  /** Stops probing Redis (at shutdown). */
  close(): void {
    this.closed = true;
    clearInterval(this.probeTimer);
    this.redis?.off('ready', this.onReady);
  }

  create(name: string, { points, seconds }: Limit): Limiter {
    const options = { keyPrefix: `idp:${name}`, points, duration: seconds };
    if (!this.redis) return new RateLimiterMemory(options);
    const limiter = new SharedLimiter(new RateLimiterRedis({ ...options, storeClient: this.redis }), new RateLimiterMemory(options), this.circuit);
    this.limiters.push(limiter);
    return limiter;
  }

  private succeeded(): void {
    this.failures = 0;
    // A failure or two that did not open the circuit: give Redis what memory counted for them.
    if (this.unmerged && !this.open) void this.merge();
  }

  private failed(): void {
    this.unmerged = true;
    this.failures += 1;
    if (this.open || this.failures < FAILURES_TO_OPEN || this.closed) return;
    this.open = true;
    this.logger.warn('redis failed: rate limits and lockout are counted per instance, in memory, until it answers again');
    this.probeTimer = setInterval(() => void this.probe(), PROBE_INTERVAL_MS);
    this.probeTimer.unref();
  }

  private async probe(): Promise<void> {
    if (!this.open || this.probing || this.closed) return;
    this.probing = true;
    try {
      const answered = await withDeadline(this.redis!.ping()).then(() => true, () => false);
      // Memory goes on answering during this first merge: only it holds all the outage counted.
      if (!answered || !(await this.merge())) return;
      this.open = false;
      this.failures = 0;
      clearInterval(this.probeTimer);
      this.logger.info('redis answering again: rate limits and lockout are shared again, with what was counted during the outage');
      // What was counted while the first merge ran; then the memory copies are dropped.
      await this.merge();
    } finally {
      this.probing = false;
    }
  }

  /** Gives Redis what memory counted; one merge at a time. Answers whether all of it got there. */
  private async merge(): Promise<boolean> {
    if (this.merging) return false;
    this.merging = true;
    this.unmerged = false;
    try {
      for (const limiter of this.limiters) await limiter.merge(this.redis!);
      if (!this.open) for (const limiter of this.limiters) limiter.prune();
      this.mergeFailing = false;
      return true;
    } catch (error) {
      // Redis failed again: what got there is not added twice, the rest waits for the next merge.
      // Said once per streak: a Redis that answers pings but refuses the merge keeps limits local.
      if (!this.mergeFailing) this.logger.warn({ err: error }, 'adding the limits counted in memory to Redis failed; retrying');
      this.mergeFailing = true;
      this.unmerged = true;
      return false;
    } finally {
      this.merging = false;
    }
  }
}
