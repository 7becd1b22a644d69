/**
 * Builds the Koa application from already-open services: security headers, views, our routes,
 * then oidc-provider mounted last so it serves every protocol endpoint.
 */
import path from 'node:path';
import Koa from 'koa';
import mount from 'koa-mount';
import views from 'koa-views';
import Router from '@koa/router';
import { documentsApi } from './documents/routes.ts';
import { interactionRoutes } from './interactions/routes.ts';
import { accountPages } from './accounts/account-pages.ts';
import { selfServiceRoutes } from './accounts/self-service.ts';
import { isAppError } from './http/errors.ts';
import { RouteTable } from './http/methods.ts';
import { answerError, finalAnswers, homePage } from './http/pages.ts';
import { securityHeaders } from './security/headers.ts';
import { RateLimitedError, tokenRateLimit } from './security/rate-limit.ts';
import { requestLog } from './observability/request-log.ts';
import { staticDocuments } from './oidc/static-documents.ts';
import { projectRoot } from './local/services.ts';
import type { Services } from './services.ts';

function genericMessage(status: number): string {
  if (status === 413) return 'The submitted form is too large.';
  if (status < 500) return 'The request could not be understood.';
  return 'Something went wrong on our side. Please try again.';
}

export function createApp(services: Services): Koa {
  const { config, provider, logger } = services;
  // maxIpsCount 1: behind the (one) trusted proxy, the client address is the entry that proxy
  // appended to X-Forwarded-For; entries before it were written by the client and could dodge
  // the limits per address.
  const app = new Koa({ proxy: config.trustProxy, maxIpsCount: 1, keys: [...services.cookieKeys] });

  app.use(requestLog(logger));
  app.use(securityHeaders({ hsts: config.isProduction && config.secureTransport }));
  // Compiled templates are cached except in development, where edits show on reload.
  app.use(views(path.join(projectRoot(), 'views'), { extension: 'ejs', options: { cache: config.nodeEnv !== 'development' } }));

  // One place that turns errors into answers: our own errors show their message, anything
  // unexpected shows a generic one and is logged in full (without request bodies).
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      const known = isAppError(error);
      // Client errors raised by Koa middleware (body parser: 400, 413, 415) carry `expose`.
      const http = error as { status?: number; expose?: boolean };
      const status = known ? error.status : http.expose && http.status ? http.status : 500;
      const message = known && error.expose ? error.message : genericMessage(status);
      const requestId = ctx.state.requestId as string;
      if (status >= 500) logger.error({ err: error, requestId, path: ctx.path }, 'request failed');
      else logger.info({ status, code: known ? error.code : undefined, requestId, path: ctx.path }, 'request refused');
      if (error instanceof RateLimitedError) ctx.set('Retry-After', String(error.retryAfterSeconds));
      await answerError(ctx, { status, message });
    }
  });
  // The documents API answers everything under /api itself, in problem+json.
  app.use(documentsApi({
    documents: services.documents, verifier: services.tokenVerifier, audit: services.audit, config, logger,
  }));
  // Every route registered below is added to this table, which gives 405s their Allow header.
  const routes = new RouteTable(provider);
  app.use(finalAnswers(routes));

  const health = new Router();
  health.get('/healthz', async (ctx) => {
    const checks = await Promise.allSettled([
      services.connection.db!.admin().ping(),
      services.redis ? services.redis.ping() : Promise.resolve('skipped'),
    ]);
    const [mongo, redis] = checks.map((c) => (c.status === 'fulfilled' ? 'ok' : 'down'));
    // Only MongoDB is essential: without Redis the provider keeps serving (see services.ts), so
    // a Redis outage must not take every instance out of the load balancer.
    ctx.status = mongo === 'ok' ? 200 : 503;
    ctx.set('Cache-Control', 'no-store');
    ctx.body = {
      status: mongo !== 'ok' ? 'down' : redis === 'down' ? 'degraded' : 'ok',
      mongodb: mongo,
      redis: services.redis ? redis : 'not configured',
    };
  });
  app.use(health.routes());
  const home = homePage(config.issuer);
  app.use(home.routes());
  routes.add(health).add(home);

  const interactions = interactionRoutes({
    provider, store: services.store, accounts: services.accounts, logger, config,
    rateLimits: services.rateLimits, lockout: services.lockout, mfa: services.mfa, challenges: services.mfaChallenges,
  });
  app.use(interactions.routes());
  app.use(interactions.allowedMethods());
  routes.add(interactions);

  const selfService = selfServiceRoutes({
    config, provider, accounts: services.accounts, tokens: services.accountTokens, mailer: services.mailer,
    rateLimits: services.rateLimits, lockout: services.lockout, audit: services.audit, logger,
  });
  app.use(selfService.routes());
  app.use(selfService.allowedMethods());
  routes.add(selfService);
  const account = accountPages({
    config, provider, store: services.store, accounts: services.accounts, mfa: services.mfa,
    mailer: services.mailer, audit: services.audit, logger,
    tokens: services.accountTokens, rateLimits: services.rateLimits, lockout: services.lockout,
  });
  app.use(account.routes());
  app.use(account.allowedMethods());
  routes.add(account);

  app.use(staticDocuments(['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server', '/jwks']));
  app.use(tokenRateLimit(services.rateLimits));
  app.use(mount(provider));
  return app;
}
