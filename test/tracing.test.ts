/**
 * OpenTelemetry tracing with the real server as its own process (`node src/server.ts`, as
 * `npm start` and the Docker image run it): spans for served HTTP, MongoDB and Redis arrive at an
 * OTLP/HTTP receiver this test runs on loopback, under the configured service name, without query
 * strings or Redis keys; and without OTEL_EXPORTER_OTLP_ENDPOINT none of the SDK, instrumentations,
 * exporter or module hooks is loaded. Module loads are observed with a module hook preloaded into
 * the process (module.registerHooks sees every import and require), which reports the packages
 * it loads files of (node_modules/@opentelemetry/*, the two module-hook packages, and koa as its
 * own control) and who asks for an @opentelemetry package.
 */
import { jest } from '@jest/globals';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import mongoose from 'mongoose';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices } from '../src/services.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';
import { startServerProcess } from './support/server-process.ts';

jest.setTimeout(120_000);

const databases: string[] = [];
/** A database of this suite's own, dropped at the end (the server processes do not drop theirs). */
function database(): string {
  const uri = testMongoUri('tracing');
  databases.push(uri);
  return uri;
}

afterAll(async () => {
  for (const uri of databases) {
    const connection = await mongoose.createConnection(uri).asPromise();
    await connection.dropDatabase().catch(() => {});
    await connection.close();
  }
});

/** Reports each file loaded from these packages, and who asks for an OpenTelemetry package. */
const OBSERVER = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from 'node:module';
const watched = /\\/node_modules\\/(@opentelemetry\\/[^/]+|import-in-the-middle|require-in-the-middle|koa)\\//;
const packageOf = (url) => /.*\\/node_modules\\/((?:@[^/]+\\/)?[^/]+)/.exec(url ?? '')?.[1] ?? url;
registerHooks({
  resolve(specifier, context, next) {
    if (specifier.startsWith('@opentelemetry/')) process.stderr.write('module-wanted ' + specifier + ' by ' + packageOf(context.parentURL) + '\\n');
    return next(specifier, context);
  },
  load(url, context, next) {
    const found = watched.exec(url);
    if (found) process.stderr.write('module-loaded ' + found[1] + '\\n');
    return next(url, context);
  },
});`)}`;

interface Span { service: unknown; scope: string; name: string; kind: number; traceId: string; attributes: Record<string, unknown> }
interface OtlpValue { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number }
interface OtlpAttribute { key: string; value: OtlpValue }
interface OtlpExport {
  resourceSpans: { resource: { attributes: OtlpAttribute[] }; scopeSpans: { scope: { name: string }; spans: { name: string; kind: number; traceId: string; attributes: OtlpAttribute[] }[] }[] }[];
}

const valueOf = (v: OtlpValue) => v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : v.boolValue ?? v.doubleValue);
const attributes = (list: OtlpAttribute[]) => Object.fromEntries(list.map((a) => [a.key, valueOf(a.value)]));

/** An OTLP/HTTP trace receiver on loopback: what the exporter POSTs to /v1/traces. */
async function startReceiver() {
  const bodies: string[] = [];
  const contentTypes: string[] = [];
  const server = http.createServer((request, response) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk: string) => { body += chunk; });
    request.on('end', () => {
      if (request.method === 'POST' && request.url === '/v1/traces') {
        bodies.push(body);
        contentTypes.push(request.headers['content-type'] ?? '');
      }
      response.writeHead(request.url === '/v1/traces' ? 200 : 404, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const spans = (): Span[] => bodies.flatMap((body) => (JSON.parse(body) as OtlpExport).resourceSpans.flatMap((rs) => {
    const service = attributes(rs.resource.attributes)['service.name'];
    return rs.scopeSpans.flatMap((ss) => ss.spans.map((s) => ({ service, scope: ss.scope.name, name: s.name, kind: s.kind, traceId: s.traceId, attributes: attributes(s.attributes) })));
  }));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies, contentTypes, spans, close: () => new Promise((r) => server.close(r)) };
}

const loadedModules = (output: readonly string[]) => new Set(output.filter((l) => l.startsWith('module-loaded ')).map((l) => l.slice('module-loaded '.length)));

/** A confidential client_credentials client, stored through the services the server uses. */
async function machineClient(mongoUri: string) {
  const services = await openServices(loadConfig({ NODE_ENV: 'test', MONGODB_URI: mongoUri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'silent' }), createLogger('silent'));
  try {
    const client = await services.clients.create({ name: 'Traced machine', grantTypes: ['client_credentials'], scope: 'openid', redirectUris: ['http://127.0.0.1:8080/callback'] });
    return { id: client.client_id, secret: client.client_secret! };
  } finally {
    await services.close();
  }
}

test('with OTEL_EXPORTER_OTLP_ENDPOINT, spans of HTTP, MongoDB and Redis reach the collector, without queries or keys, flushed at shutdown', async () => {
  const receiver = await startReceiver();
  const mongoUri = database();
  const server = await startServerProcess({
    env: { MONGODB_URI: mongoUri, REDIS_URL: testRedisUrl(), OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_SERVICE_NAME: 'idp-under-test', LOG_LEVEL: 'warn' },
    nodeFlags: ['--import', OBSERVER],
  });
  try {
    const machine = await machineClient(mongoUri);
    const discovery = await fetch(`${server.url}/.well-known/openid-configuration?probe=query-secret-value`);
    expect(discovery.status).toBe(200);
    // Rate-limited per client in Redis before oidc-provider reads the client from MongoDB.
    const token = await fetch(`${server.url}/token`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${encodeURIComponent(machine.id)}:${encodeURIComponent(machine.secret)}`).toString('base64')}` },
      body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'openid' }),
    });
    expect(token.status).toBe(200);
    expect((await fetch(`${server.url}/healthz/live`)).status).toBe(200);

    // SIGTERM: the graceful shutdown sends what is still buffered.
    await server.stop();
    expect(await server.exited).toBe(0);
    expect(receiver.contentTypes.length).toBeGreaterThan(0);
    for (const type of receiver.contentTypes) expect(type).toMatch(/^application\/json/);

    const spans = receiver.spans();
    expect(new Set(spans.map((s) => s.service))).toEqual(new Set(['idp-under-test']));
    const served = spans.filter((s) => s.kind === 2 && s.scope === '@opentelemetry/instrumentation-http');
    const discoverySpan = served.find((s) => s.attributes['url.path'] === '/.well-known/openid-configuration');
    expect(discoverySpan?.attributes).toMatchObject({ 'http.request.method': 'GET', 'http.response.status_code': 200 });
    expect(discoverySpan?.attributes).not.toHaveProperty('url.query');
    const tokenSpan = served.find((s) => s.attributes['url.path'] === '/token');
    expect(tokenSpan?.attributes).toMatchObject({ 'http.request.method': 'POST', 'http.response.status_code': 200 });
    expect(served.filter((s) => String(s.attributes['url.path']).startsWith('/healthz'))).toEqual([]);

    // The token request's own database and Redis commands, in its trace.
    const inTokenTrace = spans.filter((s) => s.traceId === tokenSpan!.traceId);
    const mongo = inTokenTrace.filter((s) => s.scope === '@opentelemetry/instrumentation-mongodb');
    const redis = inTokenTrace.filter((s) => s.scope === '@opentelemetry/instrumentation-ioredis');
    expect(mongo.length).toBeGreaterThan(0);
    expect(mongo.some((s) => String(s.attributes['db.collection.name'] ?? s.attributes['db.mongodb.collection'] ?? s.name).includes('oidc_client'))).toBe(true);
    expect(redis.length).toBeGreaterThan(0);
    for (const span of [...mongo, ...redis]) expect(span.kind).toBe(3);

    const everything = receiver.bodies.join('\n');
    for (const secret of ['query-secret-value', machine.id, machine.secret]) expect(everything).not.toContain(secret);

    // The observer works: here it saw the SDK load.
    expect([...loadedModules(server.output)]).toEqual(expect.arrayContaining([
      'koa', 'import-in-the-middle', '@opentelemetry/sdk-node', '@opentelemetry/instrumentation-mongodb', '@opentelemetry/exporter-trace-otlp-http',
    ]));
  } finally {
    await server.stop();
    await receiver.close();
  }
});

test('without OTEL_EXPORTER_OTLP_ENDPOINT no OpenTelemetry SDK, instrumentation, exporter or module hook is loaded', async () => {
  const server = await startServerProcess({
    env: { MONGODB_URI: database(), REDIS_URL: testRedisUrl(), LOG_LEVEL: 'warn' },
    nodeFlags: ['--import', OBSERVER],
  });
  try {
    expect((await fetch(`${server.url}/.well-known/openid-configuration`)).status).toBe(200);
    const loaded = loadedModules(server.output);
    expect(loaded.has('koa')).toBe(true);
    // prom-client (the metrics) requires the API package, a no-op until an SDK registers; nothing else.
    expect([...loaded].filter((name) => name !== 'koa')).toEqual(loaded.has('@opentelemetry/api') ? ['@opentelemetry/api'] : []);
    expect(new Set(server.output.filter((l) => l.startsWith('module-wanted ')))).toEqual(
      loaded.has('@opentelemetry/api') ? new Set(['module-wanted @opentelemetry/api by prom-client']) : new Set(),
    );
  } finally {
    await server.stop();
  }
});
