/**
 * CSRF protection for our own HTML forms (double submit with a signed, HttpOnly cookie).
 * Every GET gives the page a token (`ctx.state.csrfToken`); every unsafe request must send it back
 * as the `_csrf` form field. Comparison is constant-time. oidc-provider's own logout form carries
 * its own xsrf token and is not covered here.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Middleware } from 'koa';
import { AppError } from '../http/errors.ts';

const COOKIE = 'idp.csrf';

export function csrf(options: { secure: boolean }): Middleware {
  const cookieOptions = { httpOnly: true, sameSite: 'lax' as const, secure: options.secure, signed: true, overwrite: true };
  return async (ctx, next) => {
    let secret = ctx.cookies.get(COOKIE, { signed: true });
    if (!secret) {
      secret = randomBytes(32).toString('base64url');
      ctx.cookies.set(COOKIE, secret, cookieOptions);
    }
    ctx.state.csrfToken = secret;
    if (!['GET', 'HEAD', 'OPTIONS'].includes(ctx.method)) {
      const sent = (ctx.request as { body?: Record<string, unknown> }).body?._csrf;
      const valid = typeof sent === 'string'
        && Buffer.byteLength(sent) === Buffer.byteLength(secret)
        && timingSafeEqual(Buffer.from(sent), Buffer.from(secret));
      if (!valid) throw new AppError('csrf_failed', 'This form has expired. Go back, reload the page and try again.', 403);
    }
    await next();
  };
}
