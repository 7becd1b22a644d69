/**
 * Whether this instance can serve, as a load balancer needs to know it: at once and without
 * ever hanging.
 *
 * DatabaseHealth pings MongoDB every 250 ms (one ping at a time) with a deadline of its own and
 * keeps the verdict, so readiness never waits on the database, and requests learn within 1.25 s
 * that it has stopped answering (src/http/guards.ts then answers 503 at once instead of letting
 * every request wait for its own timeout and pile up in memory).
 */
import Router, { type RouterMiddleware } from '@koa/router';
import type { Connection } from 'mongoose';
import type { Logger } from './logger.ts';

/** A ping slower than the deadline counts as no answer: a hang is noticed within 1.25 s. */
const PING_INTERVAL_MS = 250;
const PING_DEADLINE_MS = 1000;

export class DatabaseHealth {
  private readonly connection: Connection;
  private readonly logger: Logger;
  private up = true;
  private checkedAt: Date | undefined;
  private pending = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly downListeners = new Set<() => void>();

  constructor(connection: Connection, logger: Logger) {
    this.connection = connection;
    this.logger = logger;
  }

  /** True until a ping fails or misses its deadline; true again after the next one that answers. */
  get available(): boolean {
    return this.up;
  }

  get lastChecked(): Date | undefined {
    return this.checkedAt;
  }

  /** Called each time the database goes from answering to not answering. Returns an unsubscribe. */
  onDown(listener: () => void): () => void {
    this.downListeners.add(listener);
    return () => this.downListeners.delete(listener);
  }

  start(): () => void {
    this.check();
    this.timer = setInterval(() => this.check(), PING_INTERVAL_MS);
    this.timer.unref();
    return () => clearInterval(this.timer);
  }

  private check(): void {
    // Only one ping is ever waiting on the database; one past its deadline keeps the verdict "down".
    if (this.pending) return;
    this.pending = true;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), PING_DEADLINE_MS); });
    const ping = this.connection.db!.admin().ping().then(() => true, () => false).finally(() => {
      this.pending = false;
      clearTimeout(timer);
    });
    void Promise.race([ping, deadline]).then((ok) => this.report(ok));
  }

  private report(ok: boolean): void {
    this.checkedAt = new Date();
    if (ok === this.up) return;
    this.up = ok;
    if (ok) {
      this.logger.info('database answering again');
    } else {
      this.logger.error(`database did not answer a ping within ${PING_DEADLINE_MS} ms: answering 503 until it does`);
      for (const listener of this.downListeners) listener();
    }
  }
}

export interface HealthDeps {
  database: DatabaseHealth;
  /** Redis as the rate limits see it: 'ok', 'down' (limits counted per instance) or 'not configured'. */
  redisState: () => string;
  /** True from the moment shutdown begins. */
  draining: () => boolean;
}

/**
 * /healthz/live: the process answers (restart it if not). /healthz/ready: send it traffic (the
 * database answers and the instance is not shutting down); /healthz is the same. Redis is
 * reported but not required: without it limits are counted per instance and serving goes on.
 */
export function healthRoutes({ database, redisState, draining }: HealthDeps): Router {
  const router = new Router();
  router.use(async (ctx, next) => {
    ctx.set('Cache-Control', 'no-store');
    await next();
  });
  router.get('/healthz/live', (ctx) => {
    ctx.body = { status: 'ok' };
  });
  const ready: RouterMiddleware = (ctx) => {
    const mongodb = database.available ? 'ok' : 'down';
    const redis = redisState();
    const status = draining() ? 'draining' : mongodb === 'down' ? 'down' : redis === 'down' ? 'degraded' : 'ok';
    ctx.status = status === 'ok' || status === 'degraded' ? 200 : 503;
    ctx.body = { status, mongodb, redis, checkedAt: database.lastChecked?.toISOString() ?? null };
  };
  router.get('/healthz/ready', ready);
  router.get('/healthz', ready);
  return router;
}
