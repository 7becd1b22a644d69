/**
 * OpenTelemetry tracing, on only when OTEL_EXPORTER_OTLP_ENDPOINT is set: spans for HTTP (served
 * and sent), Koa routes, MongoDB commands and Redis commands, through the Node SDK, exported as
 * OTLP/HTTP JSON to `${OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces` under OTEL_SERVICE_NAME.
 *
 * Instrumentations patch modules as they load, so this must run before the modules it patches are
 * imported. In ESM every static import is loaded before any code runs; hence src/server.ts
 * imports node:http, Koa and the services (mongoose, ioredis) only inside startServer, and main()
 * calls startTracing first. Modules imported as ESM (koa, ioredis) are seen through
 * import-in-the-middle's synchronous hooks (module.registerHooks, Node >= 24.11), registered here
 * for those modules only; CommonJS loads (mongoose's mongodb, node:http) through
 * require-in-the-middle. Off costs nothing: this file imports no OpenTelemetry module statically,
 * and it is itself imported only when the variable is set.
 *
 * What spans leave out: query strings (authorization requests and callbacks carry state, codes and
 * hints there), Redis arguments (keys hold addresses and emails: commands go by name only), MongoDB
 * values (the instrumentation puts "?" in their place), health probes and metric scrapes. MongoDB
 * and Redis commands are traced inside a request only, not for every poll of a background timer.
 * Metrics and logs stay with Prometheus and pino: the SDK exports neither.
 *
 * The SDK reads a few OTEL_* variables itself, on top of config.ts (README "Metrics and tracing"):
 * OTEL_EXPORTER_OTLP_HEADERS (a collector's credentials), OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*
 * (batching), OTEL_PROPAGATORS, OTEL_LOG_LEVEL and OTEL_SDK_DISABLED.
 */
import type { RequestOptions } from 'node:http';
import type { Config } from '../config.ts';
import type { Logger } from './logger.ts';

export interface Tracing {
  /** Sends the spans still buffered (at most SHUTDOWN_MS), then stops. Never throws. */
  shutdown(): Promise<void>;
}

/** The modules import-in-the-middle wraps when they are imported as ESM (nothing else is touched). */
const INSTRUMENTED = ['koa', 'ioredis', 'mongodb', 'http', 'https'];
const SHUTDOWN_MS = 5000;
const UNTRACED_PATHS = /^\/(?:healthz|metrics)(?:[/?]|$)/;

/** The signal's path appended to the endpoint, as the OTLP exporter specification says. */
export function tracesUrl(endpoint: string): string {
  const url = new URL(endpoint);
  url.pathname = `${url.pathname.replace(/\/+$/, '')}/v1/traces`;
  return url.toString();
}

/** A sent request's URL without its query (only when it has one; the default stands otherwise). */
function outgoingWithoutQuery(options: RequestOptions): Record<string, string> {
  const [path = '/', query] = (options.path ?? '/').split('?', 2);
  if (query === undefined) return {};
  const host = options.hostname ?? options.host ?? 'localhost';
  return { 'url.full': `${options.protocol ?? 'http:'}//${host.includes(':') ? `[${host}]` : host}${options.port ? `:${options.port}` : ''}${path}` };
}

export async function startTracing(config: Pick<Config, 'tracing'>, logger: Logger): Promise<Tracing | undefined> {
  const { endpoint, serviceName } = config.tracing;
  if (!endpoint) return undefined;
  // Before the instrumentations are enabled: their ESM hooks are registered with these.
  const { register } = await import('import-in-the-middle/register-hooks.mjs');
  register({ include: INSTRUMENTED });
  const [{ NodeSDK }, { OTLPTraceExporter }, { hostDetector, processDetector }, { HttpInstrumentation }, { KoaInstrumentation, KoaLayerType },
    { MongoDBInstrumentation }, { IORedisInstrumentation }, { UndiciInstrumentation }] = await Promise.all([
    import('@opentelemetry/sdk-node'), import('@opentelemetry/exporter-trace-otlp-http'), import('@opentelemetry/resources'),
    import('@opentelemetry/instrumentation-http'), import('@opentelemetry/instrumentation-koa'),
    import('@opentelemetry/instrumentation-mongodb'), import('@opentelemetry/instrumentation-ioredis'),
    import('@opentelemetry/instrumentation-undici'),
  ]);
  const sdk = new NodeSDK({
    serviceName,
    // Not the environment's detector: config.ts is where the environment is read.
    resourceDetectors: [hostDetector, processDetector],
    traceExporter: new OTLPTraceExporter({ url: tracesUrl(endpoint) }),
    // Otherwise the SDK would also push metrics and logs to the same endpoint.
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: [
      new HttpInstrumentation({
        ignoreIncomingRequestHook: (request) => UNTRACED_PATHS.test(request.url ?? ''),
        // An attribute set to undefined is left off the span.
        startIncomingSpanHook: () => ({ 'url.query': undefined }),
        startOutgoingSpanHook: outgoingWithoutQuery,
      }),
      // Route spans only: one per middleware (oidc-provider's too) would multiply every request.
      new KoaInstrumentation({ ignoreLayersType: [KoaLayerType.MIDDLEWARE] }),
      new MongoDBInstrumentation({ requireParentSpan: true }),
      new IORedisInstrumentation({ requireParentSpan: true, dbStatementSerializer: (command) => command }),
      // fetch (undici): key sets of clients and of the documents API, inside a request only (like
      // MongoDB and Redis). A client's registered URL may carry credentials in its query: left out.
      new UndiciInstrumentation({
        requireParentforSpans: true,
        startSpanHook: (request) => ({ 'url.full': `${request.origin}${request.path.split('?')[0]}`, 'url.query': undefined }),
      }),
    ],
  });
  sdk.start();
  logger.info({ endpoint: new URL(endpoint).origin, serviceName }, 'tracing to an OTLP endpoint');
  return {
    async shutdown() {
      await Promise.race([
        sdk.shutdown().catch((error: unknown) => logger.warn({ err: error }, 'flushing the last spans failed')),
        new Promise((resolve) => setTimeout(resolve, SHUTDOWN_MS).unref()),
      ]);
    },
  };
}
