/**
 * Rate limits and lockout when Redis fails, against a Redis of this suite's own: a hung Redis
 * (SIGSTOP) costs a few requests its command timeout and then none (the circuit breaker answers
 * from memory), and whatever memory counted during an outage (counts, refunds, deletions, locks)
 * is in Redis once it answers again, so every instance sharing it sees the same limits.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import type { StoredClient } from '../src/oidc/clients.ts';
import { hashKey, LimiterStore, type Limiter } from '../src/security/rate-limit.ts';
import { Browser } from './support/browser.ts';
import { startFaultyRedis, type FaultyService } from './support/faults.ts';
import { authorizationRequest, openLoginPage, registerRelyingParty, submitLogin, type RelyingParty } from './support/flows.ts';
import { testMongoUri } from './support/env.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const run = randomBytes(4).toString('hex');
const unique = (tag: string) => `${tag}-${run}-${randomBytes(3).toString('hex')}`;

let faulty: FaultyService;
/** This suite's view of Redis, to see what the instances left there. */
let inspect: Redis;

/** A client like the app's (src/services.ts connectRedis): fails fast when down, 500 ms when hung. */
const connect = () => new Redis(faulty.uri, { enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 500 });

async function until(what: string, check: () => boolean | Promise<boolean>, seconds = 15): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(100);
  }
}

async function timed(operation: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await operation().catch(() => undefined);
  return performance.now() - started;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const stored = async (key: string) => Number(await inspect.get(key));

beforeAll(async () => {
  faulty = await startFaultyRedis();
  inspect = new Redis(faulty.uri, { maxRetriesPerRequest: 1 });
});

afterAll(async () => {
  inspect?.disconnect();
  await faulty?.stop();
});

describe('LimiterStore against a failing Redis', () => {
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => { lines.push(line); } });
  const logged = (level: number) => lines.filter((line) => (JSON.parse(line) as { level: number }).level === level).length;
  let client: Redis;
  let store: LimiterStore;

  beforeEach(async () => {
    lines.length = 0;
    client = connect();
    await until('the client is connected', () => client.status === 'ready');
    store = new LimiterStore(client, logger);
  });

  afterEach(() => {
    store.close();
    client.disconnect();
  });

  /**
   * Hangs Redis and opens the circuit with a read (which changes nothing when Redis runs it late);
   * answers the times of that read and of the next, which must no longer wait on Redis.
   */
  async function hang(limiter: Limiter): Promise<number[]> {
    faulty.pause();
    return [await timed(() => limiter.get('x')), await timed(() => limiter.get('x'))];
  }

  test('stops asking a hung Redis after one timeout, then merges what memory counted once it answers', async () => {
    const name = unique('rl');
    const limiter = store.create(name, { points: 5, seconds: 60 });
    const key = hashKey('someone');
    await limiter.consume(key);
    expect(store.state()).toBe('shared');

    const [timeout, next] = await hang(limiter);
    expect(timeout).toBeGreaterThanOrEqual(400);
    expect(next).toBeLessThan(100);
    expect(store.state()).toBe('local');
    const fast: number[] = [];
    for (let i = 0; i < 5; i++) fast.push(await timed(() => limiter.consume(key)));
    expect(median(fast)).toBeLessThan(100);
    // Memory knows only the outage: it allows 5 more, then refuses.
    await expect(limiter.consume(key)).rejects.toMatchObject({ consumedPoints: 6 });
    expect(logged(40)).toBe(1);

    faulty.resume();
    await until('the store shares limits again', () => store.state() === 'shared');
    // 1 before the outage and 6 in memory (the refused one counts too, as it would in Redis).
    expect(await stored(`idp:${name}:${key}`)).toBe(7);
    await expect(limiter.consume(key)).rejects.toMatchObject({ consumedPoints: 8 });
    expect([logged(40), logged(30)]).toEqual([1, 1]);

    // The memory copies went with the merge: a second outage counts from nothing, and adds only its own.
    await hang(limiter);
    await expect(limiter.consume(key)).resolves.toMatchObject({ consumedPoints: 1 });
    faulty.resume();
    await until('the store shares limits again', () => store.state() === 'shared');
    expect(await stored(`idp:${name}:${key}`)).toBe(9);
    expect([logged(40), logged(30)]).toEqual([2, 2]);
  });

  test('refunds, deletions and blocks made in memory reach Redis, and a second instance sees the block', async () => {
    const name = unique('lock');
    const limiter = store.create(name, { points: 3, seconds: 60 });
    const [refunded, cleared, blocked, held] = ['refunded', 'cleared', 'blocked', 'held'].map(hashKey) as [string, string, string, string];
    const key = (id: string) => `idp:${name}:${id}`;
    await limiter.consume(refunded, 2);
    await limiter.penalty(cleared, 3);
    await limiter.block(held, 50);

    await hang(limiter);
    await limiter.reward(refunded);
    await limiter.delete(cleared);
    await limiter.penalty(cleared);
    await limiter.block(blocked, 20);
    // Shorter than the lock Redis already holds: merging it must not shorten that one.
    await limiter.block(held, 10);
    faulty.resume();
    await until('the store shares limits again', () => store.state() === 'shared');

    expect(await stored(key(refunded))).toBe(1);
    expect(await stored(key(cleared))).toBe(1);
    const blockedMs = await inspect.pttl(key(blocked));
    expect(blockedMs).toBeGreaterThan(15_000);
    expect(blockedMs).toBeLessThanOrEqual(20_000);
    expect(await inspect.pttl(key(held))).toBeGreaterThan(40_000);

    const otherClient = connect();
    await until('the second client is connected', () => otherClient.status === 'ready');
    const other = new LimiterStore(otherClient, logger).create(name, { points: 3, seconds: 60 });
    try {
      expect((await other.get(blocked))?.msBeforeNext).toBeGreaterThan(15_000);
      await expect(other.consume(blocked)).rejects.toMatchObject({ remainingPoints: 0 });
    } finally {
      otherClient.disconnect();
    }
  });

  test('close() stops the probe: the circuit stays open', async () => {
    const limiter = store.create(unique('closed'), { points: 3, seconds: 60 });
    await hang(limiter);
    store.close();
    faulty.resume();
    await sleep(2500);
    expect(store.state()).toBe('local');
    expect(new LimiterStore(undefined, logger).state()).toBe('not configured');
  });
});

describe('the app, two instances on one failing Redis', () => {
  const TOKEN_LIMIT = 30;
  let a: TestServer;
  let b: TestServer;
  const rps = new Map<TestServer, RelyingParty>();

  beforeAll(async () => {
    const env = {
      MONGODB_URI: testMongoUri('resilience_redis'), REDIS_URL: faulty.uri, TRUST_PROXY: 'true',
      LOCKOUT_THRESHOLD: '3', LOCKOUT_BASE_SECONDS: '30', LOCKOUT_MAX_SECONDS: '60', RATE_LIMIT_TOKEN_PER_CLIENT: `${TOKEN_LIMIT}/60`,
    };
    a = await startTestServer(env);
    b = await startTestServer(env);
    for (const server of [a, b]) rps.set(server, await registerRelyingParty(server));
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  const newClient = () => a.services.clients.create({ name: unique('service'), grantTypes: ['client_credentials'], scope: 'openid' });
  const tokenKey = (client: StoredClient) => `idp:rl:tokenPerClient:${hashKey(`client:${client.client_id}|ip:127.0.0.1`)}`;

  async function token(server: TestServer, client: StoredClient): Promise<number> {
    const authorization = `Basic ${Buffer.from(`${client.client_id}:${client.client_secret!}`).toString('base64')}`;
    const response = await fetch(`${server.issuer}/token`, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization }, body: 'grant_type=client_credentials',
    });
    await response.arrayBuffer();
    return response.status;
  }

  async function signIn(server: TestServer, email: string, password: string): Promise<Response> {
    const browser = new Browser({ 'x-forwarded-for': `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}` });
    const page = await openLoginPage(browser, server, (await authorizationRequest(rps.get(server)!)).url);
    return submitLogin(browser, server, page, email, password);
  }

  test('a hung Redis slows the first requests only; resumed, the count taken in memory is shared by both instances', async () => {
    const client = await newClient();
    expect(await token(a, client)).toBe(200);

    faulty.pause();
    const first = await timed(() => token(a, client));
    expect(first).toBeGreaterThanOrEqual(400);
    await token(a, client);
    await token(a, client);
    const fast: number[] = [];
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      expect(await token(a, client)).toBe(200);
      fast.push(performance.now() - started);
    }
    expect(median(fast)).toBeLessThan(150);

    faulty.resume();
    // 1 before the outage and 23 in memory; Redis may also run the 3 commands that timed out.
    await until('the outage count is merged', async () => (await stored(tokenKey(client))) >= 24);
    const count = await stored(tokenKey(client));
    expect(count).toBeLessThanOrEqual(27);
    // Both instances answer from the one count now: together they allow what is left of it.
    let served = 0;
    for (let i = 0; served < TOKEN_LIMIT && (await token(i % 2 ? b : a, client)) === 200; i++) served += 1;
    expect(served).toBe(TOKEN_LIMIT - count);
    expect([await token(a, client), await token(b, client)]).toEqual([429, 429]);
  });

  test('a lockout and a count taken while Redis is down still hold on both instances once it is back', async () => {
    const email = `${unique('locked')}@example.com`;
    const password = 'a perfectly long password';
    await a.services.accounts.create({ email, password, emailVerified: true });
    const client = await newClient();

    await faulty.kill();
    for (let i = 0; i < 3; i++) expect((await signIn(a, email, 'not the password at all')).status).toBe(401);
    expect((await signIn(a, email, password)).status).toBe(429);
    for (let i = 0; i < 5; i++) expect(await token(a, client)).toBe(200);

    await faulty.restart();
    // Restarted without persistence: the lock in Redis can only come from the merge.
    const lockKey = `idp:lockout:locks:${hashKey(email)}`;
    await until('the lock is merged', async () => (await inspect.pttl(lockKey).catch(() => -2)) > 0);
    await until('the second instance is connected again', () => b.services.redis?.status === 'ready');
    expect(await stored(tokenKey(client))).toBe(5);

    for (const server of [a, b]) {
      const refused = await signIn(server, email, password);
      expect(refused.status).toBe(429);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(10);
      expect(Number(refused.headers.get('retry-after'))).toBeLessThanOrEqual(30);
    }
    let served = 0;
    while (served < TOKEN_LIMIT && (await token(b, client)) === 200) served += 1;
    expect(served).toBe(TOKEN_LIMIT - 5);
  });
});
