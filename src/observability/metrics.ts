/**
 * Prometheus metrics (prom-client), in the text exposition format at /metrics.
 *
 * Where they are served (config.metrics): on a listener of their own when METRICS_PORT is set;
 * otherwise on the main port behind `Authorization: Bearer METRICS_TOKEN` when that is set;
 * otherwise, outside production only, on the main port without a token; in production without
 * either, nowhere.
 *
 * Every label takes its values from a small fixed set (route names, OAuth error codes, outcomes),
 * never from a path, an id or anything a client chose, so the series cannot multiply.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Context, Middleware } from 'koa';
import type { mongo } from 'mongoose';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { LimiterState } from '../security/limiter-store.ts';

/**
 * The process's own metrics, under prom-client's default names, read when scraped. Not
 * prom-client's collectDefaultMetrics: its garbage-collection observer runs on every collection,
 * and cost 0.15 CPU-ms per client_credentials request under the bench (12%). Created once per
 * process: tests run many servers.
 */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (processRegistry) return processRegistry;
  const registry = new Registry();
  const registers = [registry];
  const loop = monitorEventLoopDelay({ resolution: 20 });
  loop.enable();
  const cpu = (name: string, help: string, read: (usage: NodeJS.CpuUsage) => number) => new Counter({
    name, help, registers,
    collect() {
      this.reset();
      this.inc(read(process.cpuUsage()) / 1e6);
    },
  });
  cpu('process_cpu_user_seconds_total', 'User CPU time spent in seconds', (usage) => usage.user);
  cpu('process_cpu_system_seconds_total', 'System CPU time spent in seconds', (usage) => usage.system);
  const gauge = (name: string, help: string, read: () => number) => new Gauge({ name, help, registers, collect() { this.set(read()); } });
  gauge('process_resident_memory_bytes', 'Resident memory size in bytes', () => process.memoryUsage.rss());
  gauge('nodejs_heap_size_used_bytes', 'Process heap size used from Node.js in bytes', () => process.memoryUsage().heapUsed);
  gauge('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes', () => process.memoryUsage().heapTotal);
  gauge('nodejs_external_memory_bytes', 'Node.js external memory size in bytes', () => process.memoryUsage().external);
  gauge('nodejs_active_resources_total', 'Active resources keeping the event loop alive', () => process.getActiveResourcesInfo().length);
  const startTime = Math.round(Date.now() / 1000 - process.uptime());
  gauge('process_start_time_seconds', 'Start time of the process since unix epoch in seconds', () => startTime);
  // The event loop's delay since the last scrape (each scrape starts a new measurement).
  gauge('nodejs_eventloop_lag_seconds', 'Mean event-loop delay since the last scrape, in seconds', () => (Number.isNaN(loop.mean) ? 0 : loop.mean / 1e9));
  gauge('nodejs_eventloop_lag_p99_seconds', '99th percentile of the event-loop delay since the last scrape, in seconds', () => loop.percentile(99) / 1e9);
  gauge('nodejs_eventloop_lag_max_seconds', 'Longest event-loop delay since the last scrape, in seconds', () => {
    const max = loop.max / 1e9;
    loop.reset();
    return max;
  });
  processRegistry = registry;
  return registry;
}

/** OAuth and OpenID Connect error codes as labels; anything else is `other`. */
const OAUTH_ERRORS = new Set([
  'invalid_request', 'invalid_client', 'invalid_grant', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope',
  'access_denied', 'unsupported_response_type', 'server_error', 'temporarily_unavailable', 'invalid_token', 'insufficient_scope',
  'interaction_required', 'login_required', 'account_selection_required', 'consent_required', 'invalid_request_uri',
  'invalid_request_object', 'request_not_supported', 'request_uri_not_supported', 'registration_not_supported',
  'invalid_redirect_uri', 'invalid_client_metadata', 'invalid_target', 'invalid_dpop_proof', 'use_dpop_nonce',
  'unsupported_token_type', 'authorization_pending', 'slow_down', 'expired_token', 'invalid_software_statement',
]);
export const oauthErrorLabel = (code: unknown) => (typeof code === 'string' && OAUTH_ERRORS.has(code) ? code : 'other');

const SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

export class Metrics {
  readonly registry = new Registry();
  readonly httpDuration = new Histogram({
    name: 'idp_http_request_duration_seconds', help: 'HTTP requests by route, method and status, from the first middleware to the answer',
    labelNames: ['route', 'method', 'status'] as const, buckets: SECONDS, registers: [this.registry],
  });
  readonly signIns = new Counter({
    name: 'idp_signins_total', help: 'Sign-ins by outcome: success once per finished sign-in, by the method that finished it (password, totp, recovery_code); failure and refused (too many attempts) per step (password, second_step)',
    labelNames: ['outcome', 'method'] as const, registers: [this.registry],
  });
  readonly tokensIssued = new Counter({
    name: 'idp_tokens_issued_total', help: 'Successful token endpoint answers by grant type',
    labelNames: ['grant_type'] as const, registers: [this.registry],
  });
  readonly oauthErrors = new Counter({
    name: 'idp_oauth_errors_total', help: 'OAuth and OpenID Connect error answers by error code',
    labelNames: ['error'] as const, registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: 'idp_rate_limit_refusals_total', help: 'Requests refused with 429 by route',
    labelNames: ['route'] as const, registers: [this.registry],
  });
  readonly lockouts = new Counter({
    name: 'idp_lockouts_total', help: 'Failed attempts that locked an account (or an unknown email) for a while, by step',
    labelNames: ['step'] as const, registers: [this.registry],
  });
  readonly mongoDuration = new Histogram({
    name: 'idp_mongodb_command_duration_seconds', help: 'MongoDB commands by name and outcome, as the driver timed them',
    labelNames: ['command', 'outcome'] as const, buckets: SECONDS, registers: [this.registry],
  });

  /** `redisState`: whether rate limits are shared in Redis right now (src/security/limiter-store.ts). */
  constructor(redisState: () => LimiterState) {
    const registry = this.registry;
    new Gauge({
      name: 'idp_redis_limits_shared',
      help: '1 while rate limits and lockouts are shared through Redis, 0 while each instance counts alone (Redis away), -1 without Redis',
      registers: [registry],
      collect() {
        const state = redisState();
        this.set(state === 'shared' ? 1 : state === 'local' ? 0 : -1);
      },
    });
  }

  /** The process's own metrics too (CPU, memory, event-loop lag, handles, garbage collection). */
  includeProcessMetrics(): void {
    this.withProcess = true;
    processMetrics();
  }

  private withProcess = false;

  /** Times every command of this client (it must have been created with monitorCommands). */
  watchMongo(client: mongo.MongoClient): void {
    client.on('commandSucceeded', (event) => this.mongoDuration.observe({ command: event.commandName, outcome: 'ok' }, event.duration / 1000));
    client.on('commandFailed', (event) => this.mongoDuration.observe({ command: event.commandName, outcome: 'error' }, event.duration / 1000));
  }

  /** Times each request; outermost but for the request memo, so every answer is counted. */
  middleware(): Middleware {
    return async (ctx, next) => {
      const end = this.httpDuration.startTimer();
      try {
        await next();
      } finally {
        const route = routeOf(ctx);
        end({ route, method: METHODS.has(ctx.method) ? ctx.method : 'other', status: String(ctx.status) });
        if (ctx.status === 429) this.rateLimited.inc({ route });
      }
    };
  }

  /** GET /metrics; `token`: the bearer token it requires, if any. */
  endpoint(token: string | undefined): Middleware {
    const expected = token === undefined ? undefined : digest(token);
    return async (ctx, next) => {
      if (ctx.path !== '/metrics') return next();
      if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
        ctx.status = 405;
        ctx.set('Allow', 'GET, HEAD');
        return undefined;
      }
      if (expected) {
        const presented = /^Bearer (.+)$/i.exec(ctx.get('authorization'))?.[1];
        if (!presented || !timingSafeEqual(digest(presented), expected)) {
          ctx.status = 401;
          ctx.set('WWW-Authenticate', 'Bearer realm="metrics"');
          return undefined;
        }
      }
      ctx.set('Cache-Control', 'no-store');
      const registry = this.withProcess ? Registry.merge([this.registry, processMetrics()]) : this.registry;
      ctx.type = registry.contentType;
      ctx.body = await registry.metrics();
      return undefined;
    };
  }
}

const digest = (value: string) => createHash('sha256').update(value).digest();

/** The route a request took, by name: oidc-provider's, a router's pattern, or a coarse area. */
function routeOf(ctx: Context): string {
  const oidcRoute = (ctx as { oidc?: { route?: string } }).oidc?.route;
  if (oidcRoute) return oidcRoute;
  const pattern = (ctx as { _matchedRoute?: unknown })._matchedRoute;
  if (typeof pattern === 'string') return pattern;
  const exact = EXACT[ctx.path];
  if (exact) return exact;
  return AREAS.find(([prefix]) => ctx.path.startsWith(prefix))?.[1] ?? 'other';
}

/** Paths answered before any router: the token endpoint's rate limit (as oidc-provider names it) and the static documents. */
const EXACT: Record<string, string> = { '/token': 'token', '/jwks': '/jwks', '/metrics': '/metrics' };
/** Paths answered outside any router, named by their area. */
const AREAS: readonly (readonly [string, string])[] = [['/healthz', '/healthz'], ['/.well-known/', '/.well-known'], ['/api/', '/api']];
