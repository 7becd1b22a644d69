/**
 * Limits the user codes tried on /device per address (RATE_LIMIT_DEVICE_CODE_PER_IP), before
 * oidc-provider looks them up: a code is a short secret that stands for a sign-in, so guessing
 * must stay far below its ~2^34 values. Like the sign-in limits it counts failures: each POST is
 * counted before it is judged (parallel guesses cannot all slip under the limit) and given back
 * when it named a live code, so someone connecting a few devices is never refused.
 */
import type { Middleware } from 'koa';
import type { KoaContextWithOIDC } from 'oidc-provider';
import { answerError } from '../http/pages.ts';
import { RateLimitedError, tryAgainIn, type RateLimits } from '../security/rate-limit.ts';

/** oidc-provider's code_verification route (routes.code_verification, kept at its default). */
export const DEVICE_PATH = '/device';

export function deviceCodeRateLimit(rateLimits: RateLimits): Middleware {
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || ctx.path !== DEVICE_PATH) return next();
    const key = ctx.ip;
    try {
      await rateLimits.consume('deviceCodePerIp', key);
    } catch (error) {
      if (!(error instanceof RateLimitedError)) throw error;
      ctx.set('Retry-After', String(error.retryAfterSeconds));
      ctx.set('Cache-Control', 'no-store');
      await answerError(ctx, {
        status: 429, heading: 'Too many codes tried',
        message: `Too many device codes were tried from your network. ${tryAgainIn(error.retryAfterSeconds)}`,
      });
      return;
    }
    await next();
    // oidc-provider names the device code on the request once it found a live, unused one.
    const found = (ctx as unknown as Partial<KoaContextWithOIDC>).oidc?.entities?.DeviceCode !== undefined;
    if (found) await rateLimits.refund('deviceCodePerIp', key);
  };
}
