/**
 * Rate limits shared by every instance through Redis: each named limit (config.rateLimits) is a
 * fixed window of `points` events per `seconds` per key. When Redis fails, the same limit is
 * counted in this process's memory instead, so the provider keeps serving with per-instance
 * limits; LimiterStore's circuit breaker keeps a hung Redis from slowing every request, and adds
 * what memory counted to Redis once it answers again.
 * Keys are stored as SHA-256 hashes: Redis never holds an email (or IP) address in clear.
 */
import { createHash } from 'node:crypto';
import type { Middleware } from 'koa';
import { RateLimiterRes } from 'rate-limiter-flexible';
import { RATE_LIMIT_NAMES, type Config, type RateLimitName } from '../config.ts';
import { AppError } from '../http/errors.ts';
import type { Limiter, LimiterStore } from './limiter-store.ts';
export { LimiterStore, type Limiter, type LimiterState } from './limiter-store.ts';

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

export class RateLimits {
  private readonly limiters: Record<RateLimitName, Limiter>;

  constructor(limits: Config['rateLimits'], store: LimiterStore) {
    this.limiters = Object.fromEntries(RATE_LIMIT_NAMES.map((name) => [name, store.create(`rl:${name}`, limits[name])])) as Record<RateLimitName, Limiter>;
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
