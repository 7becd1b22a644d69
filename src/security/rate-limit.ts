/**
 * Rate limits shared by every instance through Redis: each named limit (config.rateLimits) is a
 * fixed window of `points` events per `seconds` per key. When Redis cannot answer, the same limit
 * is counted in this process's memory instead (rate-limiter-flexible's insuranceLimiter), so the
 * provider keeps serving with per-instance limits until Redis is back.
 * Keys are stored as SHA-256 hashes: Redis never holds an email (or IP) address in clear.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Middleware } from 'koa';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { RATE_LIMIT_NAMES, type Config, type Limit, type RateLimitName } from '../config.ts';
import { AppError } from '../http/errors.ts';
import type { Logger } from '../observability/logger.ts';

/** "Try again in 2 minutes.", rounded up so that whoever waits that long is not refused again. */
export function tryAgainIn(seconds: number): string {
  const whole = Math.max(1, Math.ceil(seconds));
  const minutes = Math.ceil(whole / 60);
  const [amount, unit] = whole < 60 ? [whole, 'second'] : minutes < 60 ? [minutes, 'minute'] : [Math.ceil(whole / 3600), 'hour'];
  return `Try again in ${amount} ${unit}${amount === 1 ? '' : 's'}.`;
}

/** Whole seconds until a limiter lets the key through again; at least 1, as Retry-After needs. */
export function retryAfterSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

export class RateLimitedError extends AppError {
  readonly retryAfterSeconds: number;
  constructor(retryAfter: number) {
    super('rate_limited', `Too many attempts. ${tryAgainIn(retryAfter)}`, 429);
    this.retryAfterSeconds = retryAfter;
  }
}

export function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('base64url');
}

/** rate-limiter-flexible calls this in-memory limiter whenever Redis fails; it tells the store so. */
class MemoryInsurance extends RateLimiterMemory {
  private readonly onUse: () => void;
  constructor(options: ConstructorParameters<typeof RateLimiterMemory>[0], onUse: () => void) {
    super(options);
    this.onUse = onUse;
  }
  // Every operation the limiters here use; rate-limiter-flexible forwards each one on a Redis error.
  override consume(...args: Parameters<RateLimiterMemory['consume']>) { this.onUse(); return super.consume(...args); }
  override penalty(...args: Parameters<RateLimiterMemory['penalty']>) { this.onUse(); return super.penalty(...args); }
  override get(...args: Parameters<RateLimiterMemory['get']>) { this.onUse(); return super.get(...args); }
  override block(...args: Parameters<RateLimiterMemory['block']>) { this.onUse(); return super.block(...args); }
  override delete(...args: Parameters<RateLimiterMemory['delete']>) { this.onUse(); return super.delete(...args); }
  override reward(...args: Parameters<RateLimiterMemory['reward']>) { this.onUse(); return super.reward(...args); }
}

/**
 * Makes the limiters for RateLimits and Lockout: in Redis with a memory fallback, or in memory
 * only without Redis. Falling back is logged once per outage, not once per request.
 */
export class LimiterStore {
  private readonly redis: Redis | undefined;
  private readonly logger: Logger;
  private fallenBack = false;

  constructor(redis: Redis | undefined, logger: Logger) {
    this.redis = redis;
    this.logger = logger;
    if (!redis) logger.warn('rate limits and lockout are kept in this process only (no Redis; development only)');
    redis?.on('ready', () => {
      if (this.fallenBack) logger.info('rate limits and lockout are shared through Redis again');
      this.fallenBack = false;
    });
  }

  create(name: string, { points, seconds }: Limit): RateLimiterAbstract {
    const options = { keyPrefix: `idp:${name}`, points, duration: seconds };
    if (!this.redis) return new RateLimiterMemory(options);
    return new RateLimiterRedis({ ...options, storeClient: this.redis, insuranceLimiter: new MemoryInsurance(options, () => this.fellBack()) });
  }

  private fellBack(): void {
    if (this.fallenBack) return;
    this.fallenBack = true;
    this.logger.warn('redis unreachable: rate limits and lockout are counted per instance, in memory, until it is back');
  }
}

export class RateLimits {
  private readonly limiters: Record<RateLimitName, RateLimiterAbstract>;

  constructor(limits: Config['rateLimits'], store: LimiterStore) {
    this.limiters = Object.fromEntries(RATE_LIMIT_NAMES.map((name) => [name, store.create(`rl:${name}`, limits[name])])) as Record<RateLimitName, RateLimiterAbstract>;
  }

  /** Counts one event like `consume`; answers the seconds to wait before going ahead (0: go ahead). */
  async wait(name: RateLimitName, key: string): Promise<number> {
    try {
      await this.consume(name, key);
      return 0;
    } catch (error) {
      if (error instanceof RateLimitedError) return error.retryAfterSeconds;
      throw error;
    }
  }

  /**
   * Gives back the event `consume` counted, for limits that count failures: an attempt is counted
   * before it is judged (so parallel attempts cannot all slip under the limit) and refunded once
   * it has succeeded.
   */
  async refund(name: RateLimitName, key: string): Promise<void> {
    await this.limiters[name].reward(hashKey(key), 1);
  }

  /** Counts one event for `key` (an email, IP address or client id); throws RateLimitedError over the limit. */
  async consume(name: RateLimitName, key: string): Promise<void> {
    try {
      await this.limiters[name].consume(hashKey(key));
    } catch (error) {
      // Over the limit, rate-limiter-flexible rejects with its result rather than an Error.
      if (error instanceof RateLimiterRes) throw new RateLimitedError(retryAfterSeconds(error.msBeforeNext));
      throw error;
    }
  }
}

/** RFC 6749 section 2.3.1: the client id is form-urlencoded before it goes into HTTP Basic. */
function basicClientId(authorization: string): string | undefined {
  const credentials = /^basic\s+([A-Za-z0-9+/]+=*)\s*$/i.exec(authorization)?.[1];
  if (!credentials) return undefined;
  const decoded = Buffer.from(credentials, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 1) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
  } catch {
    return undefined;
  }
}

/**
 * Limits POST /token per client before oidc-provider sees the request. The client comes from HTTP
 * Basic only: reading client_id from the body here would consume the stream oidc-provider parses,
 * so other requests (public clients, client_secret_post) are counted per address instead. The
 * client id is not authenticated yet (ids are public), so it is counted together with the address:
 * someone sending requests in a client's name uses up their own allowance, not the client's.
 */
export function tokenRateLimit(rateLimits: RateLimits): Middleware {
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || ctx.path !== '/token') return next();
    const clientId = basicClientId(ctx.get('authorization'));
    try {
      await rateLimits.consume('tokenPerClient', clientId === undefined ? `ip:${ctx.ip}` : `client:${clientId}|ip:${ctx.ip}`);
    } catch (error) {
      if (!(error instanceof RateLimitedError)) throw error;
      ctx.status = 429;
      ctx.set('Retry-After', String(error.retryAfterSeconds));
      ctx.set('Cache-Control', 'no-store');
      ctx.body = { error: 'too_many_requests', error_description: `Too many token requests. ${tryAgainIn(error.retryAfterSeconds)}` };
      return;
    }
    await next();
  };
}
