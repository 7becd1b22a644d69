/**
 * Composition root: reads the environment once, opens services, serves HTTP, and shuts down
 * gracefully on SIGINT/SIGTERM.
 */
import type { Server } from 'node:http';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createLogger, type Logger } from './observability/logger.ts';
import type { Tracing } from './observability/tracing.ts';
import type { Services } from './services.ts';

/**
 * What serving needs is imported when a server starts, not with this file: tracing must be running
 * before node:http, Koa and the database clients are loaded (src/observability/tracing.ts).
 */
const servingModules = () => Promise.all([import('node:http'), import('./app.ts'), import('./http/methods.ts'), import('./services.ts')]);

export interface RunningServer {
  readonly url: string;
  readonly services: Services;
  close(): Promise<void>;
}

export async function startServer(
  config: Config, logger: Logger = createLogger(config.logLevel), options: { monitorCommands?: boolean } = {},
): Promise<RunningServer> {
  const [{ default: http }, { createApp }, { refuseConnect, refuseUnparsable }, { startServices }] = await servingModules();
  const { services, stop } = await startServices(config, logger, options);
  let draining = false;
  const app = createApp(services, { draining: () => draining });
  const { http: limits } = config;
  const server = http.createServer({
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node looks for expired headers and request timeouts every 30 s by default, which let a
    // slow client hold a connection for up to 30 s past its limit.
    connectionsCheckingInterval: 1000,
  }, app.callback());
  server.maxConnections = limits.maxConnections;
  // Node itself would drop CONNECT without an answer and answer unknown methods with a bare 400.
  server.on('connect', refuseConnect);
  server.on('clientError', refuseUnparsable);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  }).catch(async (error: unknown) => {
    await stop();
    await services.close();
    throw error;
  });
  const metricsServer = config.metrics.port === undefined ? undefined
    : await listenForMetrics(services, config.host, config.metrics.port).catch(async (error: unknown) => {
      server.close();
      await stop();
      await services.close();
      throw error;
    });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`,
    services,
    /**
     * Graceful: readiness fails and every answer asks for its connection to be closed; after
     * SHUTDOWN_DELAY_SECONDS no new connections are taken and idle ones close; requests in flight
     * get SHUTDOWN_GRACE_SECONDS, then whatever is left is cut, the mail being sent is finished
     * and the connections are closed (none of it waits on a hung database).
     */
    close() {
      closing ??= (async () => {
        draining = true;
        // Load balancers that learn of the shutdown from readiness keep sending for a while.
        if (limits.shutdownDelayMs > 0) await delay(limits.shutdownDelayMs);
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        metricsServer?.close();
        metricsServer?.closeAllConnections();
        server.closeIdleConnections();
        const graceEnds = Date.now() + limits.shutdownGraceMs;
        // idle() ends before the last answer is written; `closed` once it is out and its connection gone.
        await Promise.race([Promise.all([app.guards.idle(), closed]), delay(limits.shutdownGraceMs)]);
        server.closeAllConnections();
        await closed;
        // Then the timers, and the mail worker finishes the message it is sending (mail the last
        // requests queued waits in the outbox for the next instance): what is left of the grace,
        // and a second at least.
        await Promise.race([stop(), delay(Math.max(1000, graceEnds - Date.now()))]);
        await services.close();
      })();
      return closing;
    },
  };
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/** METRICS_PORT: /metrics on a listener of its own (and nothing else there). */
async function listenForMetrics(services: Services, host: string, port: number): Promise<Server> {
  const [{ default: http }, { default: Koa }] = await Promise.all([import('node:http'), import('koa')]);
  if (!services.config.metrics.token && !['127.0.0.1', '::1', 'localhost'].includes(host)) {
    services.logger.warn({ host, port }, 'metrics are served without METRICS_TOKEN on a non-loopback address: keep METRICS_PORT off any network a client can reach');
  }
  const app = new Koa();
  app.use(services.metrics.endpoint(services.config.metrics.token));
  const server = http.createServer({ requestTimeout: 10_000, headersTimeout: 5_000 }, app.callback());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

/** Loads the config from the environment or exits with one line per bad variable. */
export function configFromEnvironment(overrides: Record<string, string> = {}): Config {
  try {
    return loadConfig({ ...process.env, ...overrides });
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw error;
  }
}

export async function main(config: Config): Promise<RunningServer> {
  const logger = createLogger(config.logLevel);
  let tracing: Tracing | undefined;
  const running = await (async () => {
    // Before startServer imports anything tracing instruments; the module is not even loaded without it.
    if (config.tracing.endpoint) tracing = await (await import('./observability/tracing.ts')).startTracing(config, logger);
    return startServer(config, logger);
  })().catch((error: unknown) => {
    logger.fatal({ err: error }, 'start-up failed');
    process.exit(1);
  });
  logger.info({ url: running.url, issuer: config.issuer, env: config.nodeEnv }, 'identity provider listening');
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      logger.info({ signal }, 'shutting down');
      running.close().then(() => tracing?.shutdown()).then(() => process.exit(0), (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      });
    });
  }
  return running;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main(configFromEnvironment());
}
