/**
 * What keeps one instance standing when its dependencies or its callers misbehave:
 * - at most `maxInFlight` requests at a time; more get 503 at once instead of queueing in memory
 *   (a hung database once piled up 5,333 sockets and ended the process out of heap);
 * - while the database is known not to answer, requests that need it get 503 at once, and those
 *   already waiting on it are answered 503 the moment that becomes known;
 * - every request is answered within `deadlineMs`, whatever it is waiting for;
 * - while draining, every answer tells the client to close its connection.
 * Health checks are exempt from all of it: they must answer, and fast, exactly then.
 *
 * A request answered early keeps running in the background until its own database timeouts end
 * it (bounded: see MONGODB_OPERATION_TIMEOUT_MS). Its answer is discarded, headers included, but
 * the database writes it has sent may still complete: a 503 does not promise that nothing
 * happened, which is why creating documents takes an Idempotency-Key.
 */
import type { Middleware } from 'koa';
import type { DatabaseHealth } from '../observability/health.ts';
import type { Logger } from '../observability/logger.ts';
import { answerUnavailable } from './unavailable.ts';
import { leaveBodyTo } from './unread-body.ts';

const HEALTH = new Set(['/healthz', '/healthz/live', '/healthz/ready']);

/** Served from memory or computed without the database. */
const WITHOUT_DATABASE = new Set(['/', '/.well-known/openid-configuration', '/.well-known/oauth-authorization-server', '/jwks', '/favicon.ico', '/favicon.svg']);

export interface GuardOptions {
  maxInFlight: number;
  deadlineMs: number;
  database: DatabaseHealth;
  draining: () => boolean;
  logger: Logger;
}

export interface RequestGuards {
  readonly middleware: Middleware;
  /** Requests being worked on now (health checks not counted). */
  inFlight(): number;
  /** Resolves when no request is in flight. */
  idle(): Promise<void>;
}

type Cut = 'deadline' | 'database';

/** The headers answerUnavailable sets. */
const UNAVAILABLE_HEADERS = new Set(['retry-after', 'cache-control', 'content-type', 'content-length']);

/** How often requests are checked against their deadline (one timer for all of them). */
const SWEEP_MS = 250;

export function requestGuards({ maxInFlight, deadlineMs, database, draining, logger }: GuardOptions): RequestGuards {
  let inFlight = 0;
  let idleWaiters: (() => void)[] = [];
  let refusedSince = 0;
  /** Requests not yet answered, each with the function that answers it early. */
  const waiting = new Map<(reason: Cut) => void, number>();
  let sweeper: NodeJS.Timeout | undefined;
  const sweep = () => {
    const now = performance.now();
    for (const [cut, started] of waiting) if (now - started >= deadlineMs) cut('deadline');
    if (waiting.size > 0) return;
    clearInterval(sweeper);
    sweeper = undefined;
  };
  database.onDown(() => {
    for (const cut of waiting.keys()) cut('database');
  });

  const guarded: Middleware = async (ctx, next) => {
    if (HEALTH.has(ctx.path)) return next();
    if (inFlight >= maxInFlight) {
      // One line per burst, not one per refused request.
      if (refusedSince === 0) logger.warn({ inFlight }, 'at MAX_REQUESTS_IN_FLIGHT: refusing new requests with 503');
      refusedSince += 1;
      return answerUnavailable(ctx, 1);
    }
    if (!database.available && !WITHOUT_DATABASE.has(ctx.path)) return answerUnavailable(ctx);

    inFlight += 1;
    refusedSince = 0;
    const headersBefore = new Set(Object.keys(ctx.response.headers));
    // Counted until the work itself ends, even when answered early: that is what holds memory.
    const work = next().finally(() => {
      inFlight -= 1;
      if (inFlight > 0) return;
      for (const resolve of idleWaiters) resolve();
      idleWaiters = [];
    });
    let cut: (reason: Cut) => void = () => {};
    const cutShort = new Promise<Cut>((resolve) => { cut = resolve; });
    waiting.set(cut, performance.now());
    sweeper ??= setInterval(sweep, SWEEP_MS).unref();
    try {
      const outcome = await Promise.race([work.then(() => undefined), cutShort]);
      if (outcome !== undefined) {
        // The abandoned work may still fail; its error has nobody left to answer.
        work.catch(() => {});
        leaveBodyTo(ctx.req, work);
        // Nothing of the abandoned answer (a cookie, a Location, an ETag) goes out with the 503,
        // not even what it sets while the 503 is being rendered.
        const strip = (keep: ReadonlySet<string>) => {
          for (const name of Object.keys(ctx.response.headers)) if (!headersBefore.has(name) && !keep.has(name)) ctx.remove(name);
        };
        strip(new Set());
        logger.warn({ requestId: ctx.state.requestId as unknown, path: ctx.path, reason: outcome }, 'request answered 503 before it finished');
        await answerUnavailable(ctx);
        strip(UNAVAILABLE_HEADERS);
      }
    } finally {
      waiting.delete(cut);
    }
    return undefined;
  };

  // Asked as the answer leaves (Koa writes it after this returns), so a request that began before
  // shutdown also closes its connection.
  const middleware: Middleware = async (ctx, next) => {
    try {
      await guarded(ctx, next);
    } finally {
      if (draining()) ctx.set('Connection', 'close');
    }
  };

  return {
    middleware,
    inFlight: () => inFlight,
    idle: () => (inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => idleWaiters.push(resolve))),
  };
}
