/**
 * The provider as `npm run bench` runs it: src/server.ts's start-up (same config, logger and
 * shutdown) with the driver's command monitoring on, and a counter of the MongoDB commands it
 * issues, served as JSON on 127.0.0.1:BENCH_COUNTS_PORT (GET /) so the bench can read it before
 * and after each scenario.
 *
 * Which commands count: the background timers (mail worker, revocation poll every few seconds,
 * documents audit relay, expiry sweep, health ping) issue commands of their own, some on the very
 * collections protocol work uses (the sweep deletes from every oidc_* collection, the relay reads
 * `documents`), so neither a list of collections nor an idle baseline separates them well: the
 * first miscounts the doc_* scenarios, the second is noisy at a few sign-ins per round (one sweep
 * tick is a dozen commands). Instead every HTTP request runs in an AsyncLocalStorage scope, and a
 * command counts as request work when it starts inside one (promise continuations keep the scope
 * through the driver's connection checkout). The rest is counted as background and reported apart.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import http from 'node:http';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { startServer } from '../../src/server.ts';

/** Handshakes and liveness checks, not work (as test/db-commands.test.ts filters them). */
const IGNORED = new Set(['hello', 'isMaster', 'ismaster', 'ping']);

/** Command counts by "command collection", e.g. "find oidc_accesstoken". */
export interface CommandCounts { request: Record<string, number>; background: Record<string, number> }

const countsPort = Number(process.env.BENCH_COUNTS_PORT);
if (!Number.isInteger(countsPort) || countsPort <= 0) throw new Error('BENCH_COUNTS_PORT must be the port to serve the command counts on');

const inRequest = new AsyncLocalStorage<true>();
// Patched before startServer creates its server: every 'request' event runs inside the scope.
const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function emitInScope(this: http.Server, event: string | symbol, ...args: unknown[]): boolean {
  const emitted = () => Reflect.apply(emit, this, [event, ...args]) as boolean;
  return event === 'request' ? inRequest.run(true, emitted) : emitted();
};

const config = loadConfig(process.env);
const logger = createLogger(config.logLevel);
const running = await startServer(config, logger, { monitorCommands: true }).catch((error: unknown) => {
  logger.fatal({ err: error }, 'start-up failed');
  process.exit(1);
});

const counts: CommandCounts = { request: {}, background: {} };
running.services.connection.getClient().on('commandStarted', (event) => {
  if (IGNORED.has(event.commandName)) return;
  // The collection is the command's first value (find: "accounts"); getMore names it apart.
  const target = event.commandName === 'getMore' ? event.command.collection as unknown : event.command[event.commandName] as unknown;
  const key = typeof target === 'string' ? `${event.commandName} ${target}` : event.commandName;
  const bucket = inRequest.getStore() ? counts.request : counts.background;
  bucket[key] = (bucket[key] ?? 0) + 1;
});

const countsServer = http.createServer((_request, response) => {
  response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(counts));
});
await new Promise<void>((resolve) => countsServer.listen(countsPort, '127.0.0.1', resolve));
logger.info({ url: running.url, issuer: config.issuer, env: config.nodeEnv, countsPort }, 'identity provider listening (bench, commands counted)');

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    logger.info({ signal }, 'shutting down');
    countsServer.close();
    running.close().then(() => process.exit(0), (error: unknown) => {
      logger.error({ err: error }, 'shutdown failed');
      process.exit(1);
    });
  });
}
