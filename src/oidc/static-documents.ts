/**
 * Discovery is the same for every request for the life of the process (the issuer and
 * configuration are fixed at start-up), yet oidc-provider rebuilds it each time. This
 * keeps the first successful answer and serves it from memory, and lets clients and caches keep
 * it for a while too.
 *
 * oidc-provider writes its endpoint URLs from the request's host, so only requests for the
 * issuer's own origin are cached or answered from the cache: a first request with a forged Host
 * (or a health check on an instance's own address) must not decide what every later client is told.
 */
import type { Middleware } from 'koa';

export function staticDocuments(issuer: string, paths: readonly string[], maxAgeSeconds = 300): Middleware {
  const cache = new Map<string, { type: string; body: string }>();
  const origin = new URL(issuer).origin;
  return async (ctx, next) => {
    if ((ctx.method !== 'GET' && ctx.method !== 'HEAD') || !paths.includes(ctx.path) || `${ctx.protocol}://${ctx.host}` !== origin) return next();
    const cached = cache.get(ctx.path);
    if (cached === undefined) {
      await next();
      if (ctx.status !== 200 || typeof ctx.body !== 'object' || ctx.body === null) return;
      // The type too: JWKS is application/jwk-set+json, discovery application/json.
      cache.set(ctx.path, { type: ctx.response.get('Content-Type'), body: JSON.stringify(ctx.body) });
    } else {
      ctx.type = cached.type;
      ctx.body = cached.body;
    }
    // Public documents: any origin may read them (as oidc-provider's own CORS policy allows).
    ctx.set('Access-Control-Allow-Origin', '*');
    ctx.set('Cache-Control', `public, max-age=${maxAgeSeconds}`);
  };
}

/**
 * The public JWKS, from the keys in use now (src/oidc/key-refresh.ts): next, active and retiring
 * keys, without private members or key_ops. `maxAgeSeconds` is the promise that rotation keeps
 * (a key signs only after being published longer than this).
 */
export function publishedKeys(jwks: () => { keys: unknown[] }, maxAgeSeconds: number): Middleware {
  return async (ctx, next) => {
    if ((ctx.method !== 'GET' && ctx.method !== 'HEAD') || ctx.path !== '/jwks') return next();
    ctx.type = 'application/jwk-set+json; charset=utf-8';
    ctx.body = JSON.stringify(jwks());
    ctx.set('Access-Control-Allow-Origin', '*');
    ctx.set('Cache-Control', `public, max-age=${maxAgeSeconds}`);
  };
}
