/**
 * CORS for the documents API only (the provider's pages never need it). Origins are matched
 * exactly against the configured allow-list; others get no CORS headers, so browsers keep the
 * response from them. No credentials mode: the API takes bearer tokens, never cookies.
 */
import type { Middleware } from 'koa';

export interface CorsOptions {
  origins: readonly string[];
  methods: readonly string[];
  allowHeaders: readonly string[];
  exposeHeaders: readonly string[];
  maxAgeSeconds: number;
}

export function cors(options: CorsOptions): Middleware {
  const allowed = new Set(options.origins);
  return async (ctx, next) => {
    ctx.vary('Origin');
    const origin = ctx.get('origin');
    if (!origin || !allowed.has(origin)) {
      await next();
      return;
    }
    ctx.set('Access-Control-Allow-Origin', origin);
    if (ctx.method === 'OPTIONS' && ctx.get('access-control-request-method')) {
      ctx.set('Access-Control-Allow-Methods', options.methods.join(', '));
      ctx.set('Access-Control-Allow-Headers', options.allowHeaders.join(', '));
      ctx.set('Access-Control-Max-Age', String(options.maxAgeSeconds));
      ctx.status = 204;
      return;
    }
    ctx.set('Access-Control-Expose-Headers', options.exposeHeaders.join(', '));
    await next();
  };
}
