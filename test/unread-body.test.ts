/**
 * A body the server refused is still arriving when the answer goes out. The client must get the
 * answer and be able to finish sending (no reset under it), and the connection must stay usable;
 * only a body past the discard bound, or one that never arrives, has its connection closed.
 */
import { performance } from 'node:perf_hooks';
import { RawConnection, requestHead, type RawResponse } from './support/raw-http.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const MiB = 1024 * 1024;
const TIMEOUT_MS = 60_000;
let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
}, TIMEOUT_MS);

afterAll(async () => {
  await server?.close();
});

/** Opens a connection and sends the head of a POST declaring `length` bytes, and the first `sent` of them. */
async function startUpload(target: string, type: string, length: number, sent: number, headers: Record<string, string> = {}): Promise<RawConnection> {
  const connection = await RawConnection.open(server.issuer);
  connection.write(requestHead('POST', target, connection.host, { 'Content-Type': type, 'Content-Length': String(length), Accept: 'application/json', ...headers }));
  if (sent) connection.write('a'.repeat(sent));
  return connection;
}

/** Writes `bytes` more of the body in 64 KiB pieces, stopping early if the server closed. */
function sendMore(connection: RawConnection, bytes: number): void {
  for (let left = bytes; left > 0 && !connection.isClosed; left -= 64 * 1024) connection.write('a'.repeat(Math.min(left, 64 * 1024)));
}

test.each([
  ['a form over its 8 KiB limit', '/register', 'application/x-www-form-urlencoded', {}, 413],
  ['a form of a type the page does not take', '/register', 'text/plain', {}, 415],
  // Piped into the decompressor, which fails on the first bytes.
  ['a form that is not the gzip it says', '/register', 'application/x-www-form-urlencoded', { 'Content-Encoding': 'gzip' }, 400],
  ['a documents API body without a token', '/api/v1/documents', 'application/json', {}, 401],
  // oidc-provider answers its own body limit with invalid_request.
  ['a token request over oidc-provider\'s limit', '/token', 'application/x-www-form-urlencoded', {}, 400],
])('%s: the answer comes while the body is sent, the rest is accepted and the connection kept', async (_name, target, type, headers, status) => {
  const connection = await startUpload(target, type, 3 * MiB, 64 * 1024, headers);
  const refused: RawResponse = await connection.nextResponse();
  expect(refused.status).toBe(status);
  expect(refused.headers.connection).not.toBe('close');
  // The client goes on sending what it declared, as a client that does not watch for early answers does.
  sendMore(connection, 3 * MiB - 64 * 1024);
  const next = await connection.get('/healthz/live');
  expect([next.status, connection.isClosed]).toEqual([200, false]);
  connection.destroy();
}, TIMEOUT_MS);

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

test('a body past the discard bound has its connection closed, after the answer', async () => {
  const connection = await startUpload('/register', 'application/x-www-form-urlencoded', 256 * MiB, 64 * 1024);
  expect((await connection.nextResponse()).status).toBe(413);
  sendMore(connection, 64 * MiB);
  expect(await closedWithin(connection, 15_000)).not.toBe('open');
}, TIMEOUT_MS);

test('a declared body that stops coming has its connection closed when idle for the keep-alive timeout', async () => {
  const connection = await startUpload('/register', 'application/x-www-form-urlencoded', MiB, 0);
  const answered = await connection.nextResponse();
  expect(answered.status).toBe(413);
  const closed = await closedWithin(connection, 15_000);
  expect(closed).not.toBe('open');
  // HTTP_KEEP_ALIVE_TIMEOUT_SECONDS (5) of silence, checked every second.
  expect(closed !== 'open' && closed.at - answered.at).toBeLessThan(8_000);
}, TIMEOUT_MS);

test('a body that trickles in has its connection closed at the time bound', async () => {
  const connection = await startUpload('/register', 'application/x-www-form-urlencoded', MiB, 0);
  const answered = await connection.nextResponse();
  expect(answered.status).toBe(413);
  const trickle = setInterval(() => { if (!connection.isClosed) connection.write('a'); }, 500);
  const closed = await closedWithin(connection, 20_000).finally(() => clearInterval(trickle));
  expect(closed).not.toBe('open');
  // Ten seconds to send the rest (src/http/unread-body.ts), then closed: not at once, not never.
  const waitedMs = closed !== 'open' ? closed.at - answered.at : Infinity;
  expect(waitedMs).toBeGreaterThan(9_000);
  expect(waitedMs).toBeLessThan(12_000);
}, TIMEOUT_MS);
