/**
 * Several instances are one provider: two provider processes sharing one MongoDB database and one
 * Redis, behind one issuer address, with relying-party code (openid-client) and a browser that hop
 * from one instance to the other in the middle of a flow. Whatever one instance issues, records or
 * counts, the other honours: interactions and sessions, codes and refresh tokens, rate limits and
 * lockouts, revocations of JWT access tokens, and the signing keys themselves.
 *
 * One address for both, as behind a load balancer: tokens and discovery name ISSUER as the issuer,
 * and oidc-provider builds its endpoint URLs from the Host a request names, so a client must reach
 * both instances through the issuer's address for the two to look like one. Rather than rewrite
 * the host:port of every URL to reach B, a small balancer (support/balancer.ts) owns that address
 * and the test says which instance gets the next requests: flows run unmodified, and
 * `balancer.served` shows which instance answered what. Both start at once on a fresh database
 * and agree on the signing keys the first of them stores (src/oidc/keys.ts).
 */
import { jest } from '@jest/globals';
import { randomBytes, randomInt } from 'node:crypto';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import * as oidc from 'openid-client';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices, type Services } from '../src/services.ts';
import { startBalancer, type Balancer } from './support/balancer.ts';
import { Browser, readForm } from './support/browser.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';
import { authorizationRequest, callbackUrl, exchangeCode, REDIRECT_URI, type AuthRequest, type RelyingParty } from './support/flows.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

// Two provider processes start before the first test, on a machine other suites keep busy.
jest.setTimeout(120_000);

const REVOCATION_REFRESH_SECONDS = 1;
const password = 'correct horse battery staple';
const wrong = 'not the password at all';
// Random per run: the suites share one Redis, which counts failures per address and per email.
const run = randomBytes(4).toString('hex');
const newEmail = (tag: string) => `${tag}-${run}-${randomBytes(3).toString('hex')}@example.com`;
const newIp = () => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`;

const mongoUri = testMongoUri('multi');
const SIGNIN_FAILURES_PER_IP = 4;
const env: Record<string, string> = {
  MONGODB_URI: mongoUri,
  REDIS_URL: testRedisUrl(),
  REVOCATION_REFRESH_SECONDS: String(REVOCATION_REFRESH_SECONDS),
  // X-Forwarded-For (through the balancer) gives each test addresses of its own.
  TRUST_PROXY: 'true',
  // Relaxed like test/support/server.ts, but for the two limits under test here.
  ...Object.fromEntries(['SIGNIN_ATTEMPTS_PER_IP', 'SIGNIN_PER_ACCOUNT', 'MFA_PER_ACCOUNT', 'REGISTER_PER_IP', 'REGISTER_PER_EMAIL',
    'RESET_PER_IP', 'RESET_PER_EMAIL', 'VERIFY_PER_IP', 'VERIFY_PER_EMAIL', 'TOKEN_PER_CLIENT'].map((name) => [`RATE_LIMIT_${name}`, '100000/60'])),
  RATE_LIMIT_SIGNIN_PER_IP: `${SIGNIN_FAILURES_PER_IP}/60`,
  LOCKOUT_THRESHOLD: '3',
};

let balancer: Balancer;
let a: ServerProcess;
let b: ServerProcess;
/** Opened in this process on the same database, as the CLI does: registers clients and accounts. */
let services: Services;
let rp: RelyingParty;
let issuer: string;
let accountId: string;
const email = newEmail('ada');

const on = (instance: ServerProcess) => balancer.routeTo(instance.url);

async function registerRelyingParty(scope?: string): Promise<RelyingParty> {
  const client = await services.clients.create({ name: 'Test RP', redirectUris: [REDIRECT_URI], ...(scope ? { scope } : {}) });
  const config = await oidc.discovery(new URL(issuer), client.client_id, undefined, oidc.ClientSecretBasic(client.client_secret!), {
    execute: [oidc.allowInsecureRequests],
  });
  return { client, config };
}

/** The authorization request and the login page it leads to, wherever the balancer routes now. */
async function openLogin(browser: Browser, client: RelyingParty, params: Record<string, string> = {}) {
  const request = await authorizationRequest(client, params);
  const page = await browser.follow(await browser.get(request.url), issuer);
  if (page.status !== 200) throw new Error(`login page: ${page.status} ${page.headers.get('location')}`);
  return { request, form: readForm(await page.text(), page.url) };
}

/** Submits the login form, then allows on the consent page; returns the redirect to the client. */
async function finishSignIn(browser: Browser, form: { action: string; fields: Record<string, string> }, login = email): Promise<URL> {
  const consentPage = await browser.follow(await browser.post(form.action, { ...form.fields, email: login, password }), issuer);
  expect(consentPage.status).toBe(200);
  const consent = readForm(await consentPage.text(), consentPage.url);
  return callbackUrl(await browser.follow(await browser.post(consent.action, { ...consent.fields, decision: 'allow' }), issuer));
}

/** A whole sign-in and code exchange on one instance. */
async function tokensFrom(instance: ServerProcess, client = rp, browser = new Browser(), params: Record<string, string> = {}) {
  on(instance);
  const { request, form } = await openLogin(browser, client, params);
  return exchangeCode(client, request, await finishSignIn(browser, form));
}

/** One failed or successful password submission, from `ip`, on one instance; returns the status. */
async function attemptAt(instance: ServerProcess, login: string, secret: string, ip: string): Promise<number> {
  on(instance);
  const browser = new Browser({ 'x-forwarded-for': ip });
  const { form } = await openLogin(browser, rp);
  return (await browser.post(form.action, { ...form.fields, email: login, password: secret })).status;
}

beforeAll(async () => {
  balancer = await startBalancer();
  issuer = balancer.url;
  // Both at once on the fresh database, as replicas of a deployment start: each generates signing
  // keys, the first to store them wins and the other adopts them (storeNewJwks).
  [a, b] = await Promise.all([0, 1].map(() => startServerProcess({ env: { ...env, ISSUER: issuer } }))) as [ServerProcess, ServerProcess];
  services = await openServices(
    loadConfig({ NODE_ENV: 'test', ISSUER: issuer, MONGODB_URI: mongoUri, LOG_LEVEL: 'silent', COOKIE_KEYS: 'x'.repeat(32), CLIENT_CACHE_SECONDS: '0' }),
    createLogger('silent'),
  );
  accountId = (await services.accounts.create({ email, password, name: 'Ada', emailVerified: true })).id;
  on(a);
  rp = await registerRelyingParty();
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await services?.connection.dropDatabase();
  await services?.close();
  await balancer?.close();
});

test('through the issuer, A and B publish the same discovery document and signing keys', async () => {
  const published = async (instance: ServerProcess, path: string) => {
    on(instance);
    return (await fetch(`${issuer}${path}`)).json();
  };
  const discoveryA = await published(a, '/.well-known/openid-configuration');
  expect(discoveryA).toMatchObject({ issuer, authorization_endpoint: `${issuer}/auth`, token_endpoint: `${issuer}/token`, jwks_uri: `${issuer}/jwks` });
  expect(await published(b, '/.well-known/openid-configuration')).toEqual(discoveryA);
  const keysA = await published(a, '/jwks') as { keys: unknown[] };
  expect(keysA.keys).toHaveLength(3);
  expect(await published(b, '/jwks')).toEqual(keysA);
});

/** A GET straight to an instance with a Host header of the caller's choosing (fetch always sends the URL's). */
function getWithHost(instance: ServerProcess, path: string, host: string): Promise<number> {
  const { hostname, port } = new URL(instance.url);
  return new Promise((resolve, reject) => {
    http.get({ hostname, port, path, headers: { host } }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode ?? 0));
    }).on('error', reject);
  });
}

test('the discovery document an instance serves does not depend on the Host of its first request', async () => {
  // A fresh instance, its documents not cached yet, whose first visitor names another host.
  const c = await startServerProcess({ env: { ...env, ISSUER: issuer } });
  try {
    expect(await getWithHost(c, '/.well-known/openid-configuration', 'attacker.example')).toBe(200);
    on(c);
    const viaIssuer = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    expect(viaIssuer).toMatchObject({ authorization_endpoint: `${issuer}/auth`, token_endpoint: `${issuer}/token`, jwks_uri: `${issuer}/jwks` });
  } finally {
    await c.stop();
  }
});

test('a sign-in begun on A finishes on B, and the code is redeemed on A', async () => {
  const browser = new Browser();
  const start = balancer.served.length;
  on(a);
  const { request, form } = await openLogin(browser, rp);
  const begun = balancer.served.length;
  expect(balancer.served.slice(start, begun)).toEqual(expect.arrayContaining([
    expect.objectContaining({ backend: a.url, method: 'GET', path: expect.stringMatching(/^\/interaction\/[\w-]+$/), status: 200 }),
  ]));

  on(b);
  const callback = await finishSignIn(browser, form);
  const finished = balancer.served.slice(begun);
  expect(finished.map((r) => r.backend)).toEqual(finished.map(() => b.url));
  expect(finished.map((r) => `${r.method} ${r.path.replace(/\/interaction\/[\w-]+/, '/interaction/UID').replace(/\/auth\/[\w-]+/, '/auth/UID')}`))
    .toEqual(expect.arrayContaining(['POST /interaction/UID/login', 'POST /interaction/UID/consent', 'GET /auth/UID']));
  expect(callback.searchParams.get('iss')).toBe(issuer);

  on(a);
  const tokens = await exchangeCode(rp, request, callback);
  expect(balancer.served.at(-1)).toMatchObject({ backend: a.url, method: 'POST', path: '/token', status: 200 });
  expect(tokens.claims()).toMatchObject({ sub: accountId, iss: issuer, aud: rp.client.client_id });

  // The access token A issued is good at B's userinfo endpoint.
  on(b);
  expect(await oidc.fetchUserInfo(rp.config, tokens.access_token, accountId)).toMatchObject({ sub: accountId, email });
});

test('a refresh token rotated on one instance is refused on the other, which ends the grant for both', async () => {
  const refresh = (token: string) => oidc.refreshTokenGrant(rp.config, token);

  const first = await tokensFrom(a);
  on(a);
  const rotatedOnA = await refresh(first.refresh_token!);
  on(b);
  await expect(refresh(first.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
  // Reuse revokes the grant (rotateRefreshToken); A no longer honours the token it rotated.
  on(a);
  await expect(refresh(rotatedOnA.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });

  const second = await tokensFrom(b);
  on(b);
  const rotatedOnB = await refresh(second.refresh_token!);
  on(a);
  await expect(refresh(second.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
  on(b);
  await expect(refresh(rotatedOnB.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
});

test('one refresh token sent to both instances at the same moment is honoured once', async () => {
  const tokens = await tokensFrom(a);
  const basic = `Basic ${Buffer.from(`${encodeURIComponent(rp.client.client_id)}:${encodeURIComponent(rp.client.client_secret!)}`).toString('base64')}`;
  // Straight to each instance's own port: the balancer routes every request to one place at a time.
  const answers = await Promise.all([a, b].map(async (instance) => {
    const response = await fetch(`${instance.url}/token`, {
      method: 'POST',
      headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token! }),
    });
    return { status: response.status, body: await response.json() as { error?: string; refresh_token?: string } };
  }));
  expect(answers.map((answer) => answer.status).sort()).toEqual([200, 400]);
  expect(answers.find((answer) => answer.status === 400)!.body.error).toBe('invalid_grant');
});

test('failed sign-ins split across A and B lock the email on both; other accounts still sign in', async () => {
  const victim = newEmail('locked');
  const bystander = newEmail('bystander');
  await services.accounts.create({ email: victim, password, emailVerified: true });
  await services.accounts.create({ email: bystander, password, emailVerified: true });

  expect(await attemptAt(a, victim, wrong, newIp())).toBe(401);
  expect(await attemptAt(b, victim, wrong, newIp())).toBe(401);
  expect(await attemptAt(a, victim, wrong, newIp())).toBe(401);
  // The third failure (LOCKOUT_THRESHOLD) locked it, wherever the next attempt lands, right password or not.
  expect(await attemptAt(b, victim, password, newIp())).toBe(429);
  expect(await attemptAt(a, victim, password, newIp())).toBe(429);

  expect(await attemptAt(b, bystander, password, newIp())).toBe(303);
  expect(await attemptAt(a, bystander, password, newIp())).toBe(303);
});

test('failures from one address are counted together by A and B', async () => {
  const ip = newIp();
  for (let i = 0; i < SIGNIN_FAILURES_PER_IP; i += 1) {
    expect(await attemptAt(i % 2 === 0 ? a : b, newEmail('guess'), wrong, ip)).toBe(401);
  }
  expect(await attemptAt(a, email, password, ip)).toBe(429);
  expect(await attemptAt(b, email, password, ip)).toBe(429);
  expect(await attemptAt(b, email, password, newIp())).toBe(303);
});

describe('revoking JWT access tokens for the documents API', () => {
  let documentsRp: RelyingParty;
  const documents = (token: string) => fetch(`${issuer}/api/v1/documents`, { headers: { authorization: `Bearer ${token}` } });

  beforeAll(async () => {
    documentsRp = await registerRelyingParty('openid documents:read');
  });

  /**
   * Polls B's documents API until it refuses `token`, for at most REVOCATION_REFRESH_SECONDS plus
   * a margin for a busy machine (together still less than the default interval of 5 s).
   */
  async function expectRefusedByB(token: string, since: number): Promise<void> {
    on(b);
    const deadline = since + REVOCATION_REFRESH_SECONDS * 1000 + 2500;
    let response = await documents(token);
    while (response.status === 200 && Date.now() < deadline) {
      await sleep(100);
      response = await documents(token);
    }
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toContain('error="invalid_token"');
  }

  async function apiTokenFromA(browser = new Browser(), client = documentsRp): Promise<string> {
    const tokens = await tokensFrom(a, client, browser, { scope: 'openid documents:read' });
    on(b);
    expect((await documents(tokens.access_token)).status).toBe(200);
    return tokens.access_token;
  }

  // A JWT access token cannot be revoked by itself at /token/revocation (oidc-provider answers
  // unsupported_token_type, as RFC 7009 allows); its client's and its account's revocations can.
  test("rotating the client's secret (an admin command): B refuses the client's tokens within REVOCATION_REFRESH_SECONDS", async () => {
    // A client of its own: the revocation would also refuse the other tests' tokens of this second.
    const rotated = await registerRelyingParty('openid documents:read');
    const token = await apiTokenFromA(new Browser(), rotated);
    await services.clients.rotateSecret(rotated.client.client_id);
    await expectRefusedByB(token, Date.now());
  });

  test("removing an app's access on A's account page: B refuses that app's tokens, and only that app's", async () => {
    // Apps of its own: the revocation would also refuse the other tests' tokens of this second.
    const removed = await registerRelyingParty('openid documents:read');
    const browser = new Browser();
    const token = await apiTokenFromA(browser, removed);
    const otherApp = await registerRelyingParty('openid documents:read');
    const otherToken = (await tokensFrom(a, otherApp, new Browser(), { scope: 'openid documents:read' })).access_token;
    on(a);
    const accountPage = await browser.follow(await browser.get(`${issuer}/account/sign-in`), issuer);
    const html = await accountPage.text();
    // One "remove access" form per app: the one for the removed app, found by its grant.
    const forms = html.split('action="/account/apps/revoke"').slice(1).map((rest) => readForm(`<form method="post" action="/account/apps/revoke"${rest}`, accountPage.url));
    const grants = await services.store.collection('Grant').find({ 'payload.clientId': removed.client.client_id, of: { $exists: false } }).toArray();
    const remove = forms.find((form) => grants.some((grant) => grant._id === form.fields.grant));
    expect(remove).toBeDefined();
    expect((await browser.post(remove!.action, remove!.fields)).status).toBe(303);
    await expectRefusedByB(token, Date.now());
    on(b);
    expect((await documents(otherToken)).status).toBe(200);
  });

  test("signing out everywhere on A's account page: B refuses the account's tokens within REVOCATION_REFRESH_SECONDS", async () => {
    const browser = new Browser();
    const token = await apiTokenFromA(browser);
    on(a);
    const accountPage = await browser.follow(await browser.get(`${issuer}/account/sign-in`), issuer);
    expect(accountPage.status).toBe(200);
    const html = await accountPage.text();
    expect(html).toContain('action="/account/sign-out-everywhere"');
    const signOut = readForm(html.slice(html.indexOf('/account/sign-out-everywhere') - 200), accountPage.url);
    expect((await browser.post(signOut.action, signOut.fields)).status).toBe(200);
    // Timed from the moment the revocation is recorded, whatever the sign-out page took.
    await expectRefusedByB(token, Date.now());
  });
});

test('a session created on A is seen on B: prompt=none succeeds there with the session cookie alone', async () => {
  const browser = new Browser();
  const signedIn = await tokensFrom(a, rp, browser);
  const silent = (request: AuthRequest, from: Browser) => from.get(request.url).then((response) => from.follow(response, issuer));

  on(b);
  const request = await authorizationRequest(rp, { prompt: 'none', scope: 'openid email' });
  const callback = callbackUrl(await silent(request, browser));
  expect(callback.searchParams.get('error')).toBeNull();
  const tokens = await exchangeCode(rp, request, callback);
  // The same session: no new sign-in happened.
  expect(tokens.claims()).toMatchObject({ sub: accountId, auth_time: signedIn.claims()!.auth_time });

  // Without the cookie, B has nobody to sign in silently.
  const anonymous = await authorizationRequest(rp, { prompt: 'none', scope: 'openid email' });
  expect(callbackUrl(await silent(anonymous, new Browser())).searchParams.get('error')).toBe('login_required');
});
