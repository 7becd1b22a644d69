/**
 * Whether this instance can serve, as a load balancer needs to know it: at once and without
 * ever hanging.
 *
 * DatabaseHealth pings MongoDB every 250 ms (one ping at a time, on a connection of its own) and
 * keeps the verdict, so readiness never waits on the database, and requests learn within 1.5 s
 * that it has stopped answering (src/http/guards.ts then answers 503 at once instead of letting
 * every request wait for its own timeout and pile up in memory).
 */
import Router, { type RouterMiddleware } from '@koa/router';
import mongoose from 'mongoose';
import type { Logger } from './logger.ts';

const PING_INTERVAL_MS = 250;
/** Bounds each of the ping client's own waits (finding the server, connecting). */
const PING_DEADLINE_MS = 1000;
/**
 * Down once no ping has answered for this long: a hang is noticed within 1.5 s, and a ping that
 * fails at once (a refused connection) is not the verdict by itself.
 */
const DOWN_AFTER_MS = 1250;

export class DatabaseHealth {
  private readonly uri: string;
  private readonly logger: Logger;
  private client: InstanceType<typeof mongoose.mongo.MongoClient> | undefined;
  private up = true;
  private lastAnswer = Date.now();
  private checkedAt: Date | undefined;
  private pinging = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly downListeners = new Set<() => void>();

  constructor(uri: string, logger: Logger) {
    this.uri = uri;
    this.logger = logger;
  }

  /** False from DOWN_AFTER_MS without an answer until the next ping that answers. */
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

  /**
   * Pings on a client of its own (one connection): what is measured is the database, not a pool
   * that requests may have filled. Returns the stop function.
   */
  start(): () => Promise<void> {
    this.client = this.newClient();
    this.lastAnswer = Date.now();
    this.check();
    this.timer = setInterval(() => this.check(), PING_INTERVAL_MS);
    this.timer.unref();
    return async () => {
      clearInterval(this.timer);
      this.timer = undefined;
      await this.client?.close(true).catch(() => {});
    };
  }

  private newClient(): InstanceType<typeof mongoose.mongo.MongoClient> {
    return new mongoose.mongo.MongoClient(this.uri, {
      maxPoolSize: 1, serverSelectionTimeoutMS: PING_DEADLINE_MS, connectTimeoutMS: PING_DEADLINE_MS, socketTimeoutMS: 2 * PING_DEADLINE_MS,
    });
  }

  private check(): void {
    // Only one ping is ever waiting on the database; while it waits, the silence is judged, after
    // the I/O already waiting (a reply that has arrived is read first, not taken for silence).
    if (this.pinging) {
      setImmediate(() => this.judge(Date.now()));
      return;
    }
    this.pinging = true;
    const client = this.client!;
    client.db('admin').command({ ping: 1 }).then(
      () => { this.lastAnswer = Date.now(); },
      (error: unknown) => {
        // A client whose first connection failed stays closed for good: ping with a new one.
        if (!(error instanceof mongoose.mongo.MongoTopologyClosedError) || this.client !== client || this.timer === undefined) return;
        this.client = this.newClient();
        void client.close(true).catch(() => {});
      },
    ).finally(() => {
      this.pinging = false;
      this.judge(Date.now());
    });
  }

  private judge(now: number): void {
    this.checkedAt = new Date(now);
    const ok = now - this.lastAnswer <= DOWN_AFTER_MS;
    if (ok === this.up) return;
    this.up = ok;
    if (ok) {
      this.logger.info('database answering again');
    } else {
      this.logger.error(`database has not answered a ping for ${DOWN_AFTER_MS} ms: answering 503 until it does`);
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
