/**
 * Connection limits, overload protection and graceful shutdown, against the real server over raw
 * sockets: clients that send slowly or not at all are cut at their limits (not Node's 30 s check),
 * connections and requests over the caps are refused at once while health checks still answer,
 * nothing waits on a hung database past REQUEST_TIMEOUT_SECONDS, and SIGTERM drains the process
 * (see src/server.ts, src/http/guards.ts).
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { jest } from '@jest/globals';
import mongoose from 'mongoose';
import { testMongoUri, testRedisUrl } from './support/env.ts';
import { startFaultyMongo, type FaultyService } from './support/faults.ts';
import { startKeepAliveLoad } from './support/keep-alive-load.ts';
import { RawConnection, requestHead, type RawResponse } from './support/raw-http.ts';
import { HELD_PREFIX, holdTokenRequest, serverCloses, TOKEN_FORM, within } from './support/slow-clients.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';
import { startTestServer, type TestServer } from './support/server.ts';

jest.setTimeout(60_000);

const secondsSince = (start: number) => (performance.now() - start) / 1000;
const DISCOVERY = '/.well-known/openid-configuration';
interface TimedAnswer { status: number; retryAfter: string | null; seconds: number }

/** A token request from a client nobody knows: looking it up needs the database. */
async function tokenRequestFromStranger(url: string): Promise<TimedAnswer> {
  const start = performance.now();
  const response = await fetch(`${url}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`c-${randomBytes(6).toString('hex')}:secret`).toString('base64')}` },
    body: 'grant_type=client_credentials',
    signal: AbortSignal.timeout(20_000),
  });
  await response.arrayBuffer();
  return { status: response.status, retryAfter: response.headers.get('retry-after'), seconds: secondsSince(start) };
}

/** Closed by the server (with at most a 408 first) after about `limit` seconds: not sooner, and not Node's 30 s check later. */
async function expectClosedAfter(connection: RawConnection, start: number, limit: number, margin = 1.5): Promise<void> {
  const { seconds, status } = await serverCloses(connection, start);
  expect([undefined, 408]).toContain(status);
  expect(seconds).toBeGreaterThan(limit - 0.2);
  expect(seconds).toBeLessThan(limit + margin);
}

describe('slow and idle clients are cut at their limits', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ HTTP_HEADERS_TIMEOUT_SECONDS: '2', HTTP_REQUEST_TIMEOUT_SECONDS: '3', HTTP_KEEP_ALIVE_TIMEOUT_SECONDS: '1' });
  });
  afterAll(() => server.close());

  it('closes a connection whose headers stall within HTTP_HEADERS_TIMEOUT_SECONDS', async () => {
    const connection = await RawConnection.open(server.issuer);
    const start = performance.now();
    connection.write(`GET ${DISCOVERY} HTTP/1.1\r\nHost: ${connection.host}\r\nAccept: appl`);
    // Node checks for expired requests once a second (connectionsCheckingInterval).
    await expectClosedAfter(connection, start, 2);
  });

  it('closes a connection whose body trickles within HTTP_REQUEST_TIMEOUT_SECONDS', async () => {
    const start = performance.now();
    const held = await holdTokenRequest(server.issuer);
    // A byte every 400 ms: never idle, so only the limit on the whole request ends it.
    let sent = HELD_PREFIX;
    const trickle = setInterval(() => { if (sent < TOKEN_FORM.length - 1 && !held.connection.isClosed) held.connection.write(TOKEN_FORM[sent++]!); }, 400);
    try {
      await expectClosedAfter(held.connection, start, 3);
    } finally {
      clearInterval(trickle);
    }
  });

  it('closes an idle keep-alive connection after HTTP_KEEP_ALIVE_TIMEOUT_SECONDS', async () => {
    const connection = await RawConnection.open(server.issuer);
    const response = await connection.get('/healthz/live');
    expect(response.status).toBe(200);
    expect(response.headers['keep-alive']).toBe('timeout=1');
    // Node keeps the socket up to 1 s past the advertised timeout (keepAliveTimeoutBuffer).
    await expectClosedAfter(connection, response.at, 1, 2);
  });
});

describe('MAX_CONNECTIONS', () => {
  let server: TestServer;
  const open: RawConnection[] = [];
  beforeAll(async () => {
    server = await startTestServer({ MAX_CONNECTIONS: '5', HTTP_KEEP_ALIVE_TIMEOUT_SECONDS: '60' });
  });
  afterAll(async () => {
    for (const connection of open) connection.destroy();
    await server.close();
  });

  /** A connection the server has accepted and answered on. */
  async function answeredConnection(): Promise<RawConnection> {
    const connection = await RawConnection.open(server.issuer);
    open.push(connection);
    expect((await connection.get('/healthz/live')).status).toBe(200);
    return connection;
  }

  it('closes connections over the limit and takes new ones once some close', async () => {
    const five: RawConnection[] = [];
    for (let i = 0; i < 5; i++) five.push(await answeredConnection());

    const sixth = await RawConnection.open(server.issuer);
    open.push(sixth);
    const start = performance.now();
    sixth.write(requestHead('GET', '/healthz/live', sixth.host));
    await expect(sixth.nextResponse(3000)).rejects.toThrow(/connection closed/);
    expect(secondsSince(start)).toBeLessThan(2);
    for (const connection of five) expect(connection.isClosed).toBe(false);

    five[0]!.destroy();
    five[1]!.destroy();
    await Promise.all([five[0]!.closed, five[1]!.closed]);
    // The server counts a connection as gone once it has seen it close: allow it a moment.
    let accepted: RawResponse | undefined;
    for (let attempt = 0; attempt < 20 && !accepted; attempt++) {
      const connection = await RawConnection.open(server.issuer);
      open.push(connection);
      accepted = await connection.get('/healthz/live', {}, 1000).catch(() => undefined);
      if (!accepted) await sleep(100);
    }
    expect(accepted?.status).toBe(200);
    expect((await five[2]!.get(DISCOVERY)).status).toBe(200);
  });
});

describe('MAX_REQUESTS_IN_FLIGHT', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ MAX_REQUESTS_IN_FLIGHT: '3' });
  });
  afterAll(() => server.close());

  const discovery = () => fetch(`${server.issuer}${DISCOVERY}`, { signal: AbortSignal.timeout(10_000) });

  it('answers 503 with Retry-After at once when full, keeps health checks up, and recovers', async () => {
    const held = [await holdTokenRequest(server.issuer), await holdTokenRequest(server.issuer)];
    expect((await discovery()).status).toBe(200);
    held.push(await holdTokenRequest(server.issuer));

    // Until the third held request reaches the guard (it counts once its headers are in).
    const until = performance.now() + 5000;
    while ((await discovery()).status !== 503 && performance.now() < until) await sleep(50);

    const start = performance.now();
    const refused = await discovery();
    expect(secondsSince(start)).toBeLessThan(1);
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(await refused.json()).toMatchObject({ error: 'temporarily_unavailable' });

    const liveStart = performance.now();
    const live = await fetch(`${server.issuer}/healthz/live`);
    expect(live.status).toBe(200);
    expect(secondsSince(liveStart)).toBeLessThan(1);
    expect((await fetch(`${server.issuer}/healthz/ready`)).status).toBe(200);

    for (const request of held) {
      // Unauthenticated client_credentials: refused, but answered by the token endpoint.
      expect([400, 401]).toContain((await request.finish()).status);
      request.connection.destroy();
    }
    expect((await discovery()).status).toBe(200);
  });
});

describe('REQUEST_TIMEOUT_SECONDS with a hung database', () => {
  let mongo: FaultyService;
  let server: TestServer;
  beforeAll(async () => {
    mongo = await startFaultyMongo();
    server = await startTestServer({ MONGODB_URI: `${mongo.uri}/resilience_http`, REQUEST_TIMEOUT_SECONDS: '2' });
  });
  afterAll(async () => {
    mongo.resume();
    await server.close();
    await mongo.stop();
  });

  it('answers every request within the deadline while the database hangs, and serves again after', async () => {
    expect((await tokenRequestFromStranger(server.issuer)).status).toBe(401);

    mongo.pause();
    const waiting = await Promise.all(Array.from({ length: 5 }, () => tokenRequestFromStranger(server.issuer)));
    for (const answer of waiting) {
      expect(answer).toMatchObject({ status: 503, retryAfter: expect.stringMatching(/^\d+$/) });
      expect(answer.seconds).toBeLessThan(3);
    }
    // By now the pings have failed: no request waits at all.
    const known = await tokenRequestFromStranger(server.issuer);
    expect(known.status).toBe(503);
    expect(known.seconds).toBeLessThan(1);

    mongo.resume();
    const until = performance.now() + 20_000;
    while ((await fetch(`${server.issuer}/healthz/ready`)).status !== 200 && performance.now() < until) await sleep(200);
    expect((await tokenRequestFromStranger(server.issuer)).status).toBe(401);
  });
});

describe('graceful shutdown on SIGTERM (the provider as a process)', () => {
  const GRACE = 3;
  const databases: string[] = [];
  let child: ServerProcess | undefined;
  afterEach(async () => {
    await child?.stop();
    child = undefined;
  });
  afterAll(async () => {
    for (const uri of databases) {
      const connection = await mongoose.createConnection(uri).asPromise();
      await connection.dropDatabase();
      await connection.close();
    }
  });

  async function startChild(env: Record<string, string> = {}): Promise<ServerProcess> {
    const uri = env.MONGODB_URI ?? testMongoUri('http');
    if (!env.MONGODB_URI) databases.push(uri);
    child = await startServerProcess({ env: { MONGODB_URI: uri, REDIS_URL: testRedisUrl(), SHUTDOWN_GRACE_SECONDS: String(GRACE), ...env } });
    return child;
  }

  /** Sends SIGTERM and returns when it was sent, once the process has logged that it began draining. */
  async function terminate(server: ServerProcess): Promise<number> {
    const sentAt = performance.now();
    server.signal('SIGTERM');
    const heard = () => server.output.some((line) => line.includes('shutting down'));
    const until = performance.now() + 5000;
    while (!heard() && performance.now() < until) await sleep(10);
    expect(heard()).toBe(true);
    return sentAt;
  }


  it('drains under keep-alive load: answers what was sent, asks connections to close, stops accepting', async () => {
    const server = await startChild();
    const balancer = await RawConnection.open(server.url);
    expect((await balancer.get('/healthz/ready')).status).toBe(200);
    const client = await RawConnection.open(server.url);
    expect((await client.get(DISCOVERY)).status).toBe(200);
    // Held on a keep-alive connection that has carried a request already.
    const held = await holdTokenRequest(server.url, client);
    const auth = `/auth?client_id=unknown-${randomBytes(4).toString('hex')}&response_type=code&scope=openid&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb`;
    const load = startKeepAliveLoad(server.url, [DISCOVERY, DISCOVERY, '/healthz/ready', auth]);
    await sleep(1500);
    // The balancer's next check has begun (headers half sent) when SIGTERM comes.
    balancer.write(`GET /healthz/ready HTTP/1.1\r\nHost: ${balancer.host}\r\n`);
    await sleep(200);

    const sigterm = await terminate(server);
    balancer.write('\r\n');
    const check = await balancer.nextResponse();
    expect(check.status).toBe(503);
    expect(JSON.parse(check.body)).toMatchObject({ status: 'draining' });
    expect(check.headers.connection).toBe('close');
    expect(await within(balancer.closed, 2000)).not.toBe('timed out');

    await expect(RawConnection.open(server.url)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await load.ended;
    // Every keep-alive connection was closed at once, idle or after its answer.
    expect(secondsSince(sigterm)).toBeLessThan(2);
    const sentBefore = load.records.filter((record) => record.writtenAt < sigterm);
    expect(sentBefore.length).toBeGreaterThan(20);
    expect(sentBefore.filter((record) => record.error !== undefined)).toEqual([]);

    const answer = await held.finish().catch((error: Error) => { throw new Error(`the request in flight at SIGTERM got no answer: ${error.message}`); });
    expect([400, 401]).toContain(answer.status);
    expect(answer.headers.connection).toBe('close');
    expect(await within(server.exited, 2000)).toBe(0);
    expect(secondsSince(sigterm)).toBeLessThan(GRACE - 0.5);
  });

  it('with SHUTDOWN_DELAY_SECONDS, keeps taking new connections while readiness says draining, then exits 0', async () => {
    const server = await startChild({ SHUTDOWN_DELAY_SECONDS: '2' });
    const sigterm = await terminate(server);
    // A new connection during the delay is accepted and told the instance is draining.
    const late = await RawConnection.open(server.url);
    const ready = await late.get('/healthz/ready');
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.body)).toMatchObject({ status: 'draining' });
    expect(ready.headers.connection).toBe('close');
    expect(secondsSince(sigterm)).toBeLessThan(1.5);
    expect(await within(server.exited, 8000)).toBe(0);
    expect(secondsSince(sigterm)).toBeGreaterThan(1.9);
  });

  it('exits 0 at once when nothing is in flight, closing idle keep-alive connections', async () => {
    const server = await startChild();
    const idle = await RawConnection.open(server.url);
    expect((await idle.get(DISCOVERY)).status).toBe(200);
    const sigterm = await terminate(server);
    expect(await within(server.exited, 5000)).toBe(0);
    expect(secondsSince(sigterm)).toBeLessThan(1.5);
    expect(((await idle.closed).at - sigterm) / 1000).toBeLessThan(1);
  });

  it('gives a request that does not finish the grace, then cuts it and exits 0', async () => {
    const server = await startChild();
    const held = await holdTokenRequest(server.url);
    // Its headers are in: the request is being worked on.
    await sleep(300);
    const sigterm = await terminate(server);
    expect(await within(server.exited, (GRACE + 5) * 1000)).toBe(0);
    const seconds = secondsSince(sigterm);
    expect(seconds).toBeGreaterThan(GRACE - 0.2);
    expect(seconds).toBeLessThan(GRACE + 1);
    const cut = await serverCloses(held.connection, sigterm, 1000);
    expect(cut.seconds).toBeGreaterThan(GRACE - 0.2);
  });

  it('exits 0 within the grace and a little while the database hangs', async () => {
    const mongo = await startFaultyMongo();
    try {
      const server = await startChild({ MONGODB_URI: `${mongo.uri}/resilience_http_shutdown` });
      expect((await tokenRequestFromStranger(server.url)).status).toBe(401);
      mongo.pause();
      const waiting = Array.from({ length: 3 }, () => tokenRequestFromStranger(server.url).catch(() => undefined));
      await sleep(300);
      const sigterm = await terminate(server);
      expect(await within(server.exited, (GRACE + 10) * 1000)).toBe(0);
      expect(secondsSince(sigterm)).toBeLessThan(GRACE + 3);
      await Promise.all(waiting);
    } finally {
      await mongo.stop();
    }
  });
});
