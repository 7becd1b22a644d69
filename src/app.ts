/**
 * Builds the Koa application from already-open services: security headers, views, our routes,
 * then oidc-provider mounted last so it serves every protocol endpoint.
 */
import path from 'node:path';
import Koa from 'koa';
import mount from 'koa-mount';
import { documentsApi } from './documents/routes.ts';
import { deviceCodeRateLimit } from './devices/rate-limit.ts';
import { interactionRoutes } from './interactions/routes.ts';
import { accountPages } from './accounts/account-pages.ts';
import { selfServiceRoutes } from './accounts/self-service.ts';
import { isAppError } from './http/errors.ts';
import { RouteTable } from './http/methods.ts';
import { answerError, finalAnswers, homePage } from './http/pages.ts';
import { securityHeaders } from './security/headers.ts';
import { RateLimitedError, tokenRateLimit, type LimiterState } from './security/rate-limit.ts';
import { requestLog } from './observability/request-log.ts';
import { healthRoutes } from './observability/health.ts';
import { requestGuards, type RequestGuards } from './http/guards.ts';
import { answerUnavailable, isUnavailable, RETRY_AFTER_SECONDS, ServiceUnavailableError } from './http/unavailable.ts';
import { publishedKeys, staticDocuments } from './oidc/static-documents.ts';
import { SignInRecorder } from './audit/sign-ins.ts';
import { projectRoot } from './local/services.ts';
import type { Services } from './services.ts';
import { withRequestMemo } from './http/request-memo.ts';
import { discardUnreadBodies } from './http/unread-body.ts';
import { views } from './http/views.ts';

function genericMessage(status: number): string {
  if (status === 413) return 'The submitted form is too large.';
  if (status < 500) return 'The request could not be understood.';
  return 'Something went wrong on our side. Please try again.';
}

/**
 * oidc-provider reads a body as it comes, ignoring Content-Encoding, so a compressed form would be
 * read as garbage parameters (and a proxy and the provider could disagree on what was sent).
 */
const refuseEncodedBodies: Koa.Middleware = async (ctx, next) => {
  const encoding = ctx.get('content-encoding').trim().toLowerCase();
  if (ctx.method !== 'POST' || !encoding || encoding === 'identity') return next();
  ctx.status = 415;
  ctx.set('Cache-Control', 'no-store');
  ctx.body = { error: 'invalid_request', error_description: 'request bodies must not use a Content-Encoding' };
  return undefined;
};

/** Redis as readiness reports it: 'down' means limits are counted per instance for now. */
const REDIS_HEALTH: Record<LimiterState, string> = { shared: 'ok', local: 'down', 'not configured': 'not configured' };

/** What the server tells the app about its own life. */
export interface Lifecycle {
  /** True once shutdown has begun: readiness fails and connections are told to close. */
  draining(): boolean;
}

export function createApp(services: Services, lifecycle: Lifecycle = { draining: () => false }): Koa & { guards: RequestGuards } {
  const { config, provider, logger } = services;
  // maxIpsCount 1: behind the (one) trusted proxy, the client address is the entry that proxy
  // appended to X-Forwarded-For; entries before it were written by the client and could dodge
  // the limits per address.
  const app = new Koa({ proxy: config.trustProxy, maxIpsCount: 1, keys: [...services.cookieKeys] });

  app.use(discardUnreadBodies());
  // Each request gets its own memo of the artifacts it has read (src/http/request-memo.ts).
  app.use((_ctx, next) => withRequestMemo(next));
  app.use(services.metrics.middleware());
  app.use(requestLog(logger));
  app.use(securityHeaders({ hsts: config.isProduction && config.secureTransport }));
  // On the main port only when METRICS_PORT does not give them a listener of their own.
  if (config.metrics.onMainPort) app.use(services.metrics.endpoint(config.metrics.token));
  // Compiled templates are cached except in development, where edits show on reload.
  app.use(views(path.join(projectRoot(), 'views'), { cache: config.nodeEnv !== 'development' }));
  const guards = requestGuards({
    maxInFlight: config.http.maxRequestsInFlight, deadlineMs: config.http.requestDeadlineMs,
    database: services.database, draining: lifecycle.draining, logger,
  });
  app.use(guards.middleware);

  // One place that turns errors into answers: our own errors show their message, anything
  // unexpected shows a generic one and is logged in full (without request bodies).
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      // A database that does not answer is not a bug: 503 and a short log line, no stack.
      if (isUnavailable(error)) {
        logger.warn({ err: { name: (error as Error).name, message: (error as Error).message }, requestId: ctx.state.requestId as unknown, path: ctx.path }, 'dependency unavailable');
        return answerUnavailable(ctx, error instanceof ServiceUnavailableError ? error.retryAfterSeconds : undefined);
      }
      const known = isAppError(error);
      // Client errors raised by Koa middleware (body parser: 400, 413, 415) carry `expose`.
      const http = error as { status?: number; expose?: boolean };
      // A client error a library raised without `expose` (co-body's) is still the client's.
      const clientError = typeof http.status === 'number' && http.status >= 400 && http.status < 500;
      const status = known ? error.status : (http.expose || clientError) && http.status ? http.status : 500;
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

  const health = healthRoutes({ database: services.database, redisState: () => REDIS_HEALTH[services.limiters.state()], draining: lifecycle.draining });
  app.use(health.routes());
  const home = homePage(config.issuer);
  app.use(home.routes());
  routes.add(health).add(home);

  const interactions = interactionRoutes({
    provider, store: services.store, accounts: services.accounts, logger, config,
    rateLimits: services.rateLimits, lockout: services.lockout, mfa: services.mfa, challenges: services.mfaChallenges,
    metrics: services.metrics, signIns: new SignInRecorder(services.metrics, services.audit),
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
    tokens: services.accountTokens, rateLimits: services.rateLimits, lockout: services.lockout, revocations: services.revocations,
  });
  app.use(account.routes());
  app.use(account.allowedMethods());
  routes.add(account);

  app.use(staticDocuments(config.issuer, ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']));
  app.use(publishedKeys(() => services.keys.publicJwks, config.keys.jwksCacheSeconds));
  app.use(tokenRateLimit(services.rateLimits));
  app.use(deviceCodeRateLimit(services.rateLimits));
  app.use(refuseEncodedBodies);
  app.use(async (ctx, next) => {
    await next();
    // oidc-provider's temporarily_unavailable (src/oidc/provider.ts) lacks the header.
    if (ctx.status === 503) ctx.set('Retry-After', ctx.response.get('Retry-After') || String(RETRY_AFTER_SECONDS));
  });
  app.use(mount(provider));
  return Object.assign(app, { guards });
}
