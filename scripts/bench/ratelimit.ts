/**
 * The ratelimit scenario: times, in the bench process against the provider's Redis, the limiter
 * work each sign-in does before hashing (signinPerIp and signinPerAccount consumed and the lockout
 * read, concurrently, as src/interactions/routes.ts does): p50/p99 of a few thousand sequential
 * checks, printed under the table (target: p50 < 1 ms). The keys are the bench's own.
 */
import { Redis } from 'ioredis';
import type { Config } from '../../src/config.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { Lockout } from '../../src/security/lockout.ts';
import { LimiterStore, RateLimits } from '../../src/security/rate-limit.ts';
import { percentile } from './stats.ts';

const RATE_LIMIT_CHECKS = 3000;

export interface RateLimitLatency { p50: number; p99: number; checks: number }

export async function rateLimitCheck(redisUrl: string, config: Config): Promise<RateLimitLatency> {
  const redis = new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
  await new Promise((resolve) => redis.once('ready', resolve));
  try {
    const store = new LimiterStore(redis, createLogger('error', 2));
    const rateLimits = new RateLimits(config.rateLimits, store);
    const lockout = new Lockout(config.lockout, store);
    const [ip, email] = ['192.0.2.1', 'ratelimit-bench@example.com'];
    const latencies: number[] = [];
    // The first checks load the Lua script into Redis and warm up the JIT; they are not counted.
    for (let i = -200; i < RATE_LIMIT_CHECKS; i += 1) {
      const t0 = performance.now();
      await Promise.all([rateLimits.consume('signinPerIp', ip), rateLimits.consume('signinPerAccount', email), lockout.lockedFor(email)]);
      if (i >= 0) latencies.push(performance.now() - t0);
    }
    latencies.sort((a, b) => a - b);
    return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), checks: latencies.length };
  } finally {
    redis.disconnect();
  }
}
