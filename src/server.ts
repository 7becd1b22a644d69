/**
 * Composition root: reads the environment once, opens services, serves HTTP, and shuts down
 * gracefully on SIGINT/SIGTERM.
 */
import http from 'node:http';
import { createApp } from './app.ts';
import { refuseConnect, refuseUnparsable } from './http/methods.ts';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createLogger, type Logger } from './observability/logger.ts';
import { startServices, type Services } from './services.ts';

export interface RunningServer {
  readonly url: string;
  readonly services: Services;
  close(): Promise<void>;
}

export async function startServer(config: Config, logger: Logger = createLogger(config.logLevel)): Promise<RunningServer> {
  const { services, stop } = await startServices(config, logger);
  const server = http.createServer(createApp(services).callback());
  // Node itself would drop CONNECT without an answer and answer unknown methods with a bare 400.
  server.on('connect', refuseConnect);
  server.on('clientError', refuseUnparsable);
  server.headersTimeout = 15_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  }).catch(async (error: unknown) => {
    stop();
    await services.close();
    throw error;
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`,
    services,
    close() {
      closing ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
          setTimeout(() => server.closeAllConnections(), 5000).unref();
        });
        stop();
        await services.close();
      })();
      return closing;
    },
  };
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
  const running = await startServer(config, logger).catch((error: unknown) => {
    logger.fatal({ err: error }, 'start-up failed');
    process.exit(1);
  });
  logger.info({ url: running.url, issuer: config.issuer, env: config.nodeEnv }, 'identity provider listening');
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      logger.info({ signal }, 'shutting down');
      running.close().then(() => process.exit(0), (error: unknown) => {
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
