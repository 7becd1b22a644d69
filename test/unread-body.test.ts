/**
 * A body the server refused is still arriving when the answer goes out. The client must get the
 * answer and be able to finish sending (no reset under it), and the connection must stay usable;
 * only a body past the discard bound, or one that never arrives, has its connection closed.
 */
import http, { type IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import Koa from 'koa';
import { formBody } from '../src/http/form-body.ts';
import { refuseUnparsable } from '../src/http/methods.ts';
import { discardUnreadBodies, leaveBodyTo, type DiscardLimits } from '../src/http/unread-body.ts';
import { RawConnection, requestHead, type RawResponse } from './support/raw-http.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const MiB = 1024 * 1024;
const TIMEOUT_MS = 60_000;
const FORM = 'application/x-www-form-urlencoded';
let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
}, TIMEOUT_MS);

afterAll(async () => {
  await server?.close();
});

/** Opens a connection to `url` and sends the head of a POST, and the first piece of its body. */
async function startUpload(url: string, target: string, headers: Record<string, string>, first?: Buffer): Promise<RawConnection> {
  const connection = await RawConnection.open(url);
  connection.write(requestHead('POST', target, connection.host, { Accept: 'application/json', ...headers }));
  if (first) connection.write(first);
  return connection;
}

/** Writes `data` in 64 KiB pieces (as chunks when `chunked`), stopping early if the server closed. */
function sendMore(connection: RawConnection, data: Buffer, chunked = false): void {
  for (let at = 0; at < data.length && !connection.isClosed; at += 64 * 1024) {
    const piece = data.subarray(at, at + 64 * 1024);
    connection.write(chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]) : piece);
  }
  if (chunked && !connection.isClosed) connection.write('0\r\n\r\n');
}

/** Resolves with the connection's close, or 'open' if it is still open after `ms`. */
async function closedWithin(connection: RawConnection, ms: number): Promise<{ at: number } | 'open'> {
  let timer: NodeJS.Timeout | undefined;
  const open = new Promise<'open'>((resolve) => { timer = setTimeout(() => resolve('open'), ms); });
  try {
    return await Promise.race([connection.closed, open]);
  } finally {
    clearTimeout(timer);
  }
}

const letters = (bytes: number) => Buffer.alloc(bytes, 'a');
/** A form that compresses poorly, so its gzip is about as long as itself. */
const noisyForm = (bytes: number) => Buffer.from(`a=${randomBytes(bytes).toString('base64url')}`);

describe('the app', () => {
  const gzipped = gzipSync(noisyForm(3 * MiB));
  test.each([
    // Refused on its declared length, before a byte of it is read.
    ['a form declared over its 8 KiB limit', '/register', { 'Content-Type': FORM, 'Content-Length': String(3 * MiB) }, letters(3 * MiB), false, 413],
    // Refused part way, by the parser counting what it read.
    ['a chunked form over its limit', '/register', { 'Content-Type': FORM, 'Transfer-Encoding': 'chunked' }, letters(3 * MiB), true, 413],
    // Refused part way, with the body piped into the decompressor.
    ['a gzip form over its limit', '/register', { 'Content-Type': FORM, 'Content-Encoding': 'gzip', 'Content-Length': String(gzipped.length) }, gzipped, false, 413],
    ['a form that is not the gzip it says', '/register', { 'Content-Type': FORM, 'Content-Encoding': 'gzip', 'Content-Length': String(3 * MiB) }, letters(3 * MiB), false, 400],
    ['a form of a type the page does not take', '/register', { 'Content-Type': 'text/plain', 'Content-Length': String(3 * MiB) }, letters(3 * MiB), false, 415],
    ['a documents API body without a token', '/api/v1/documents', { 'Content-Type': 'application/json', 'Content-Length': String(3 * MiB) }, letters(3 * MiB), false, 401],
    // oidc-provider answers its own body limit with invalid_request.
    ['a token request over oidc-provider\'s limit', '/token', { 'Content-Type': FORM, 'Content-Length': String(3 * MiB) }, letters(3 * MiB), false, 400],
  ])('%s: the answer comes while the body is sent, the rest is accepted and the connection kept', async (_name, target, headers, body, chunked, status) => {
    // The first piece is small enough to be read while flowing, and large enough to be refused.
    const firstLength = 12 * 1024;
    const first = chunked ? Buffer.concat([Buffer.from(`${firstLength.toString(16)}\r\n`), body.subarray(0, firstLength), Buffer.from('\r\n')]) : body.subarray(0, firstLength);
    const connection = await startUpload(server.issuer, target, headers, first);
    try {
      const refused: RawResponse = await connection.nextResponse();
      expect(refused.status).toBe(status);
      expect(refused.headers.connection).not.toBe('close');
      // The client goes on sending what it declared, as a client that does not watch for early answers does.
      sendMore(connection, body.subarray(firstLength), chunked);
      const next = await connection.get('/healthz/live', {}, 15_000);
      expect([next.status, connection.isClosed]).toEqual([200, false]);
    } finally {
      connection.destroy();
    }
  }, TIMEOUT_MS);

  test('a declared body that stops coming has its connection closed when idle for the keep-alive timeout', async () => {
    const connection = await startUpload(server.issuer, '/register', { 'Content-Type': FORM, 'Content-Length': String(MiB) });
    expect((await connection.nextResponse()).status).toBe(413);
    // HTTP_KEEP_ALIVE_TIMEOUT_SECONDS is 5: closed well before HTTP_REQUEST_TIMEOUT_SECONDS (30).
    expect(await closedWithin(connection, 20_000)).not.toBe('open');
  }, TIMEOUT_MS);
});

/** The discard alone, on a small Koa app with no other timeouts, so each bound is seen by itself. */
describe('the bounds', () => {
  let listener: http.Server;
  let url: string;
  let lastRequest: IncomingMessage | undefined;

  let abandonedWork: Promise<number> | undefined;

  async function listen(limits: DiscardLimits): Promise<void> {
    const app = new Koa();
    app.use(discardUnreadBodies(limits));
    // As the deadline's 503 does (src/http/guards.ts): answered at once, the work reads on.
    app.use(async (ctx, next) => {
      if (ctx.path !== '/abandoned') return next();
      // Piped, as an upload is (src/documents/files.ts).
      let received = 0;
      const counter = new Writable({ write(chunk: Buffer, _encoding, callback) { received += chunk.length; callback(); } });
      const work = pipeline(ctx.req, counter).then(() => received);
      abandonedWork = work;
      leaveBodyTo(ctx.req, work);
      ctx.status = 503;
    });
    app.use(async (ctx, next) => {
      lastRequest = ctx.req;
      try {
        await next();
      } catch (error) {
        ctx.status = (error as { status?: number }).status ?? 500;
      }
    });
    app.use(formBody({ limit: '8kb' }));
    app.use((ctx) => { ctx.status = 204; });
    listener = http.createServer({ keepAliveTimeout: 600_000, requestTimeout: 0 }, app.callback());
    listener.on('clientError', refuseUnparsable);
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(listener.address() as { port: number }).port}`;
  }

  afterEach(async () => {
    listener.closeAllConnections();
    await new Promise((resolve) => listener.close(resolve));
  });

  test('past maxBytes the connection is closed, and not before', async () => {
    await listen({ maxBytes: MiB, maxMs: 600_000 });
    const connection = await startUpload(url, '/', { 'Content-Type': FORM, 'Content-Length': String(64 * MiB) });
    expect((await connection.nextResponse()).status).toBe(413);
    sendMore(connection, letters(MiB / 2));
    expect(await closedWithin(connection, 2_000)).toBe('open');
    sendMore(connection, letters(4 * MiB));
    expect(await closedWithin(connection, 15_000)).not.toBe('open');
  }, TIMEOUT_MS);

  test('a body that trickles in has its connection closed at maxMs, not before', async () => {
    await listen({ maxBytes: 64 * MiB, maxMs: 3_000 });
    const startedAt = performance.now();
    const connection = await startUpload(url, '/', { 'Content-Type': FORM, 'Content-Length': String(MiB) });
    expect((await connection.nextResponse()).status).toBe(413);
    const trickle = setInterval(() => { if (!connection.isClosed) connection.write('a'); }, 200);
    const closed = await closedWithin(connection, 30_000).finally(() => clearInterval(trickle));
    expect(closed).not.toBe('open');
    // The timer starts once the answer is decided, which is after the head was written.
    expect(closed !== 'open' && closed.at - startedAt).toBeGreaterThanOrEqual(2_990);
  }, TIMEOUT_MS);

  test('a client that goes away after the answer ends the request too, so nothing waits on it for good', async () => {
    await listen({ maxBytes: 64 * MiB, maxMs: 600_000 });
    const connection = await startUpload(url, '/', { 'Content-Type': FORM, 'Content-Length': String(MiB) }, letters(1024));
    expect((await connection.nextResponse()).status).toBe(413);
    const request = lastRequest!;
    const ended = new Promise<string>((resolve) => request.once('close', () => resolve('closed')));
    connection.destroy();
    const outcome = await Promise.race([ended, new Promise<string>((resolve) => { setTimeout(() => resolve('still open'), 10_000).unref(); })]);
    expect([outcome, request.destroyed]).toEqual(['closed', true]);
  }, TIMEOUT_MS);

  test('work that an early answer abandoned still reads the whole body; the connection is kept', async () => {
    await listen({ maxBytes: 64 * MiB, maxMs: 600_000 });
    const connection = await startUpload(url, '/abandoned', { 'Content-Type': FORM, 'Content-Length': String(3 * MiB) }, letters(12 * 1024));
    try {
      expect((await connection.nextResponse()).status).toBe(503);
      sendMore(connection, letters(3 * MiB - 12 * 1024));
      expect(await Promise.race([abandonedWork, new Promise((resolve) => { setTimeout(() => resolve('not finished'), 15_000).unref(); })])).toBe(3 * MiB);
      expect((await connection.get('/', {}, 15_000)).status).toBe(204);
    } finally {
      connection.destroy();
    }
  }, TIMEOUT_MS);

  test('a bad chunk in a refused body closes the connection without a second answer', async () => {
    await listen({ maxBytes: 64 * MiB, maxMs: 600_000 });
    const first = Buffer.concat([Buffer.from(`${(12 * 1024).toString(16)}\r\n`), letters(12 * 1024), Buffer.from('\r\n')]);
    const connection = await startUpload(url, '/', { 'Content-Type': FORM, 'Transfer-Encoding': 'chunked' }, first);
    expect((await connection.nextResponse()).status).toBe(413);
    connection.write('not-a-chunk-size\r\n');
    expect(await closedWithin(connection, 15_000)).not.toBe('open');
    await expect(connection.nextResponse()).rejects.toThrow(/connection closed/);
  }, TIMEOUT_MS);

  test('a malformed request after a drained body, in the same packet, still gets its answer', async () => {
    await listen({ maxBytes: 64 * MiB, maxMs: 600_000 });
    const connection = await startUpload(url, '/', { 'Content-Type': FORM, 'Content-Length': String(MiB) }, letters(12 * 1024));
    try {
      expect((await connection.nextResponse()).status).toBe(413);
      // A method Node's parser does not know: 501 (refuseUnparsable).
      connection.write(Buffer.concat([letters(MiB - 12 * 1024), Buffer.from('BROKEN / HTTP/1.1\r\n\r\n')]));
      expect((await connection.nextResponse(15_000)).status).toBe(501);
    } finally {
      connection.destroy();
    }
  }, TIMEOUT_MS);
});
