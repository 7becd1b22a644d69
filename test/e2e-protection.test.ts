/**
 * Rate limits and brute-force lockout, end to end through the real login page and token endpoint
 * with real Redis: limits per address and per email, growing locks, recovery once the window or
 * lock is over, the same answer for unknown emails, and memory limits when Redis is unreachable.
 * Windows are a few seconds long so recovery is observed by waiting for Retry-After.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOGIN_FAILED } from '../src/interactions/routes.ts';
import { freePort } from '../src/local/services.ts';
import type { StoredClient } from '../src/oidc/clients.ts';
import { Browser } from './support/browser.ts';
import { authorizationRequest, openLoginPage, registerRelyingParty, submitLogin, type RelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const password = 'a perfectly long password';
const wrong = 'not the password at all';
// Random per run: the suites share one Redis, which may outlive a run (REDIS_URL).
const run = randomBytes(4).toString('hex');
const newEmail = (tag: string) => `${tag}-${run}-${randomBytes(3).toString('hex')}@example.com`;
const newIp = () => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`;
const TOO_MANY = /Too many attempts\. Try again in (\d+) seconds?\./;

interface Attempt { status: number; retryAfter: number | undefined; text: string }

/** One sign-in through a fresh browser, from `ip` (X-Forwarded-For; the servers trust the proxy). */
async function attempt(server: TestServer, rp: RelyingParty, email: string, pass: string, ip = newIp()): Promise<Attempt> {
  const browser = new Browser({ 'x-forwarded-for': ip });
  const page = await openLoginPage(browser, server, (await authorizationRequest(rp)).url);
  const response = await submitLogin(browser, server, page, email, pass);
  const retryAfter = response.headers.get('retry-after');
  // Strip the per-request parts (interaction id, CSRF token, CSP nonce) and the email echoed back.
  const text = (await response.text()).replace(/interaction[/=][\w-]+/g, 'interaction/UID').replace(/value="[\w-]{30,}"/g, 'value="T"')
    .replace(/nonce="[^"]+"/g, 'nonce="N"').replaceAll(email, 'EMAIL');
  return { status: response.status, retryAfter: retryAfter === null ? undefined : Number(retryAfter), text };
}

/** Checks a refusal: 429, a Retry-After within the window, and a page that says the same wait. */
function expectRefused(result: Attempt, maxSeconds: number): number {
  expect(result.status).toBe(429);
  expect(result.retryAfter).toBeGreaterThanOrEqual(1);
  expect(result.retryAfter).toBeLessThanOrEqual(maxSeconds);
  expect(result.text).not.toContain(LOGIN_FAILED);
  expect(Number(TOO_MANY.exec(result.text)?.[1])).toBe(result.retryAfter);
  return result.retryAfter!;
}

/** The page without the number of seconds, which may differ by one between two clocks. */
const withoutWait = (text: string) => text.replace(TOO_MANY, 'Too many attempts. Try again in N seconds.');

const waitFor = (seconds: number) => sleep(seconds * 1000 + 100);

function basic(client: StoredClient): string {
  const encode = (value: string) => new URLSearchParams({ v: value }).toString().slice(2);
  return `Basic ${Buffer.from(`${encode(client.client_id)}:${encode(client.client_secret!)}`).toString('base64')}`;
}

function tokenRequest(server: TestServer, headers: Record<string, string>, body = 'grant_type=client_credentials'): Promise<Response> {
  return fetch(`${server.issuer}/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body });
}

describe('with Redis', () => {
  const LIMIT_SECONDS = 6;
  let limited: TestServer;
  let locking: TestServer;
  let limitedRp: RelyingParty;
  let lockingRp: RelyingParty;

  beforeAll(async () => {
    // TRUST_PROXY: each test signs in from addresses of its own (X-Forwarded-For), apart from
    // the other suites, which share this Redis and all come from 127.0.0.1.
    [limited, locking] = await Promise.all([
      startTestServer({
        TRUST_PROXY: 'true',
        RATE_LIMIT_SIGNIN_PER_IP: `3/${LIMIT_SECONDS}`,
        RATE_LIMIT_SIGNIN_PER_ACCOUNT: `3/${LIMIT_SECONDS}`,
        RATE_LIMIT_TOKEN_PER_CLIENT: `3/${LIMIT_SECONDS}`,
      }),
      startTestServer({ TRUST_PROXY: 'true', LOCKOUT_THRESHOLD: '3', LOCKOUT_BASE_SECONDS: '2', LOCKOUT_MAX_SECONDS: '8' }),
    ]);
    [limitedRp, lockingRp] = await Promise.all([registerRelyingParty(limited), registerRelyingParty(locking)]);
  });

  afterAll(async () => {
    await Promise.all([limited?.close(), locking?.close()]);
  });

  test('sign-ins are limited per address, with Retry-After and a page that says when, until the window ends', async () => {
    const ip = newIp();
    for (let i = 0; i < 3; i += 1) expect((await attempt(limited, limitedRp, newEmail('ip'), wrong, ip)).status).toBe(401);
    const wait = expectRefused(await attempt(limited, limitedRp, newEmail('ip'), wrong, ip), LIMIT_SECONDS);
    // Other addresses are not affected.
    expect((await attempt(limited, limitedRp, newEmail('ip'), wrong)).status).toBe(401);

    await waitFor(wait);
    expect((await attempt(limited, limitedRp, newEmail('ip'), wrong, ip)).status).toBe(401);
  });

  test('sign-ins are limited per email, the same for unknown emails as for existing ones, until the window ends', async () => {
    const existing = newEmail('account');
    const unknown = newEmail('nobody');
    await limited.services.accounts.create({ email: existing, password, emailVerified: true });
    // Every attempt from a new address: only the per-email limit can refuse them.
    for (let i = 0; i < 3; i += 1) {
      expect((await attempt(limited, limitedRp, existing, wrong)).status).toBe(401);
      expect((await attempt(limited, limitedRp, unknown, wrong)).status).toBe(401);
    }
    const refusedExisting = await attempt(limited, limitedRp, existing, password);
    const refusedUnknown = await attempt(limited, limitedRp, unknown, password);
    const wait = expectRefused(refusedExisting, LIMIT_SECONDS);
    expectRefused(refusedUnknown, LIMIT_SECONDS);
    expect(withoutWait(refusedUnknown.text)).toBe(withoutWait(refusedExisting.text));
    expect(Math.abs(refusedUnknown.retryAfter! - wait)).toBeLessThanOrEqual(1);
    // The key is the normalized email, so a change of case does not start a new count.
    expect((await attempt(limited, limitedRp, ` ${existing.toUpperCase()} `, password)).status).toBe(429);

    await waitFor(wait);
    expect((await attempt(limited, limitedRp, existing, password)).status).toBe(303);
  });

  test('consecutive failures lock an email for longer each time; the lock ends, and a success clears the count', async () => {
    const existing = newEmail('locked');
    const unknown = newEmail('locked-nobody');
    await locking.services.accounts.create({ email: existing, password, emailVerified: true });
    for (let i = 0; i < 3; i += 1) {
      expect((await attempt(locking, lockingRp, existing, wrong)).status).toBe(401);
      expect((await attempt(locking, lockingRp, unknown, wrong)).status).toBe(401);
    }
    // Locked: even the right password is refused, and an unknown email gets the very same answer.
    const lockedExisting = await attempt(locking, lockingRp, existing, password);
    const lockedUnknown = await attempt(locking, lockingRp, unknown, password);
    const first = expectRefused(lockedExisting, 2);
    expectRefused(lockedUnknown, 2);
    expect(withoutWait(lockedUnknown.text)).toBe(withoutWait(lockedExisting.text));

    // One more failure after the lock: twice as long.
    await waitFor(first);
    expect((await attempt(locking, lockingRp, existing, wrong)).status).toBe(401);
    const second = expectRefused(await attempt(locking, lockingRp, existing, password), 4);
    expect(second).toBeGreaterThan(first);

    await waitFor(second);
    expect((await attempt(locking, lockingRp, existing, password)).status).toBe(303);
    // Counting starts again from zero: two failures lock nothing (had the count survived, the
    // first would have started an 8 s lock), and the third locks for the base time again.
    expect((await attempt(locking, lockingRp, existing, wrong)).status).toBe(401);
    expect((await attempt(locking, lockingRp, existing, wrong)).status).toBe(401);
    expect((await attempt(locking, lockingRp, existing, wrong)).status).toBe(401);
    expectRefused(await attempt(locking, lockingRp, existing, password), 2);
  });

  test('the token endpoint is limited per client (HTTP Basic), else per address, until the window ends', async () => {
    const [client, other] = await Promise.all([1, 2].map((n) => limited.services.clients.create({
      name: `service ${n}`, grantTypes: ['client_credentials'], scope: 'openid',
    })));
    for (let i = 0; i < 3; i += 1) expect((await tokenRequest(limited, { authorization: basic(client!) })).status).toBe(200);
    const refused = await tokenRequest(limited, { authorization: basic(client!) });
    expect(refused.status).toBe(429);
    const wait = Number(refused.headers.get('retry-after'));
    expect(wait).toBeGreaterThanOrEqual(1);
    expect(wait).toBeLessThanOrEqual(LIMIT_SECONDS);
    expect(refused.headers.get('cache-control')).toBe('no-store');
    const body = await refused.json() as { error: string; error_description: string };
    expect(body.error).toBe('too_many_requests');
    expect(body.error_description).toMatch(/Try again in \d+ seconds?\./);
    // Another client, even from the same address, is still served.
    expect((await tokenRequest(limited, { authorization: basic(other!) })).status).toBe(200);

    // Without Basic the body is left to oidc-provider, and the address is the key.
    const ip = newIp();
    const withoutBasic = (from: string) => tokenRequest(limited, { 'x-forwarded-for': from }, `grant_type=client_credentials&client_id=${client!.client_id}`);
    for (let i = 0; i < 3; i += 1) expect((await withoutBasic(ip)).status).toBe(401);
    expect((await withoutBasic(ip)).status).toBe(429);
    expect((await withoutBasic(newIp())).status).toBe(401);

    await waitFor(wait);
    expect((await tokenRequest(limited, { authorization: basic(client!) })).status).toBe(200);
  });
});

describe('with Redis unreachable', () => {
  let server: TestServer;
  let rp: RelyingParty;

  beforeAll(async () => {
    // Nothing listens on a port that was just free: every Redis command fails at once.
    server = await startTestServer({
      REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
      RATE_LIMIT_SIGNIN_PER_IP: '3/30',
      RATE_LIMIT_TOKEN_PER_CLIENT: '2/30',
    });
    rp = await registerRelyingParty(server);
  });

  afterAll(async () => {
    await server?.close();
    // Disconnecting an ioredis client whose socket had already failed arms a 2 s timer (it waits
    // for a 'close' that came earlier); let it run out so that Jest exits cleanly.
    await sleep(2100);
  });

  test('the provider keeps serving and still enforces the limits, per instance, from memory', async () => {
    const health = await fetch(`${server.issuer}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'degraded', redis: 'down' });

    const email = newEmail('offline');
    await server.services.accounts.create({ email, password, emailVerified: true });
    // Successes are not counted; the three failures from this address are.
    expect((await attempt(server, rp, email, password)).status).toBe(303);
    expect((await attempt(server, rp, email, password)).status).toBe(303);
    expect((await attempt(server, rp, email, wrong)).status).toBe(401);
    expect((await attempt(server, rp, newEmail('offline'), wrong)).status).toBe(401);
    expect((await attempt(server, rp, newEmail('offline'), wrong)).status).toBe(401);
    expectRefused(await attempt(server, rp, email, password), 30);

    const client = await server.services.clients.create({ name: 'offline service', grantTypes: ['client_credentials'], scope: 'openid' });
    expect((await tokenRequest(server, { authorization: basic(client) })).status).toBe(200);
    expect((await tokenRequest(server, { authorization: basic(client) })).status).toBe(200);
    expect((await tokenRequest(server, { authorization: basic(client) })).status).toBe(429);
  });
});
