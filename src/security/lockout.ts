/**
 * Brute-force lockout per sign-in key (a normalized email, whether or not it has an account):
 * after `threshold` consecutive failures the key is locked for baseSeconds, and each further
 * failure doubles the lock, up to maxSeconds. Nothing is permanent: failures are counted in a
 * window of FAILURE_WINDOW_SECONDS from the first one, and a successful sign-in clears the count.
 * Stored like the rate limits (Redis, hashed keys, memory when Redis is away; locks taken in
 * memory are added to Redis once it is back).
 */
import type { Config } from '../config.ts';
import type { RateLimitName } from '../config.ts';
import { hashKey, retryAfterSeconds, type Limiter, type LimiterStore, type RateLimits } from './rate-limit.ts';

const FAILURE_WINDOW_SECONDS = 24 * 3600;

export class Lockout {
  private readonly settings: Config['lockout'];
  /** Failures in the current window; penalties only, so its points never refuse anything. */
  private readonly failures: Limiter;
  /** A key exists while a lock runs; its TTL is the lock's length. */
  private readonly locks: Limiter;

  constructor(settings: Config['lockout'], store: LimiterStore) {
    this.settings = settings;
    this.failures = store.create('lockout:failures', { points: settings.threshold, seconds: FAILURE_WINDOW_SECONDS });
    this.locks = store.create('lockout:locks', { points: 1, seconds: settings.maxSeconds });
  }

  /** Seconds until `key` may try again; 0 when it is not locked. */
  async lockedFor(key: string): Promise<number> {
    const lock = await this.locks.get(hashKey(key));
    return lock && lock.msBeforeNext > 0 ? retryAfterSeconds(lock.msBeforeNext) : 0;
  }

  /** Counts a failed sign-in; returns the length of the lock it started (0: none). */
  async recordFailure(key: string): Promise<number> {
    const id = hashKey(key);
    const { threshold, baseSeconds, maxSeconds } = this.settings;
    const failures = (await this.failures.penalty(id)).consumedPoints;
    if (failures < threshold) return 0;
    const seconds = Math.min(maxSeconds, baseSeconds * 2 ** (failures - threshold));
    await this.locks.block(id, seconds);
    return seconds;
  }

  async recordSuccess(key: string): Promise<void> {
    await this.failures.delete(hashKey(key));
  }
}

/**
 * Seconds to wait before another guess at a secret (a code, a password on the account page): the
 * lock on `lockKey` if one runs, else the rate limit `limit` for `limitKey` (which this consumes).
 * 0 means go ahead; record the outcome with recordFailure/recordSuccess on `lockKey`.
 */
export async function waitBeforeGuess(lockout: Lockout, rateLimits: RateLimits, lockKey: string, limit: RateLimitName, limitKey: string): Promise<number> {
  const locked = await lockout.lockedFor(lockKey);
  return locked || rateLimits.wait(limit, limitKey);
}
