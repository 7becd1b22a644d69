/**
 * Back-channel logout (OpenID Connect Back-Channel Logout 1.0) end to end: real relying parties
 * (an HTTP server on 127.0.0.1, and openid-client for their sign-ins) receive the logout tokens
 * the provider POSTs and validate them with jose against the provider's JWKS. Sign-outs from
 * everywhere reach them: RP-initiated logout, "sign out everywhere", a disabled account; failed
 * deliveries are retried from the queue in MongoDB and given up after a bounded number of attempts.
 *
 * The server is assembled here (like test/support/server.ts does) so that the retry timing can be
 * shortened through the services' constructor options rather than the environment.
 */
import { jest } from '@jest/globals';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRemoteJWKSet, jwtVerify, type JWTPayload } from 'jose';
import * as oidc from 'openid-client';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { freePort } from '../src/local/services.ts';
import { DELIVERY_COLLECTION } from '../src/logout/deliveries.ts';
import { BACKCHANNEL_LOGOUT_EVENT } from '../src/logout/token.ts';
import { createLogger } from '../src/observability/logger.ts';
import { startServices } from '../src/services.ts';
import { Browser, readForm } from './support/browser.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';
import { authorizationRequest, callbackUrl, exchangeCode, POST_LOGOUT_URI, registerRelyingParty, type RelyingParty } from './support/flows.ts';
import { walk } from './support/hosted-pages.ts';
import type { TestServer } from './support/server.ts';

jest.setTimeout(120_000);

const password = 'Quarry-Lantern-Velvet-93-Harbor';
/** Short, so that retries and giving up happen within a test; what production does is the default. */
const DELIVERY = { retryBaseMs: 300, maxAttempts: 4, attemptTimeoutMs: 1500, pollMs: 100 };

type Answer = 'fail' | 'hang' | 'ok';
interface Received { path: string; contentType: string; token: string; answer: Answer }

/** The relying parties' back-channel endpoint: records every POST; each path answers from its script, then `then` (200 by default). */
class LogoutReceiver {
  readonly received: Received[] = [];
  private readonly scripts = new Map<string, { answers: Answer[]; then: Answer }>();
  private readonly server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => { body += chunk.toString(); });
    req.on('end', () => {
      const path = req.url ?? '';
      const script = this.scripts.get(path);
      const answer = script?.answers.shift() ?? script?.then ?? 'ok';
      this.received.push({ path, contentType: req.headers['content-type'] ?? '', token: new URLSearchParams(body).get('logout_token') ?? '', answer });
      if (answer === 'hang') return; // never answered: the provider's timeout ends the attempt
      res.writeHead(answer === 'fail' ? 500 : 200, { 'cache-control': 'no-store' }).end();
    });
  });
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as { port: number };
    this.url = `http://127.0.0.1:${port}`;
  }

  script(path: string, answers: Answer[], then: Answer = 'ok'): void {
    this.scripts.set(path, { answers, then });
  }

  at(path: string, answer?: Answer): Received[] {
    return this.received.filter((r) => r.path === path && (answer === undefined || r.answer === answer));
  }

  /** Waits (bounded) until `path` has received `count` POSTs (answered `answer`, if given). */
  async waitFor(path: string, count = 1, answer?: Answer): Promise<Received[]> {
    for (let waited = 0; waited < 45_000; waited += 50) {
      if (this.at(path, answer).length >= count) return this.at(path);
      await sleep(50);
    }
    throw new Error(`${path} received ${this.at(path, answer).length} logout POSTs${answer ? ` answered ${answer}` : ''}, expected ${count}`);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const logLines: string[] = [];
let server: TestServer;
let receiver: LogoutReceiver;
let jwks: ReturnType<typeof createRemoteJWKSet>;

async function startServer(): Promise<TestServer> {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const config = loadConfig({
    NODE_ENV: 'test', ISSUER: issuer, HOST: '127.0.0.1', PORT: String(port), MONGODB_URI: testMongoUri('bclogout'), REDIS_URL: testRedisUrl(),
    COOKIE_KEYS: 'test-cookie-key-0123456789abcdefghijklmnop', LOG_LEVEL: 'info',
  });
  const logger = createLogger(config.logLevel, { write: (line: string) => { logLines.push(line); } });
  const { services, stop } = await startServices(config, logger, { logoutDelivery: DELIVERY });
  const listener = http.createServer(createApp(services).callback());
  await new Promise<void>((resolve) => listener.listen(port, '127.0.0.1', resolve));
  return {
    issuer, url: issuer, services,
    async close() {
      listener.closeAllConnections();
      await new Promise<void>((resolve) => listener.close(() => resolve()));
      await stop();
      await services.connection.dropDatabase();
      await services.close();
    },
  };
}

beforeAll(async () => {
  receiver = new LogoutReceiver();
  await receiver.start();
  server = await startServer();
  jwks = createRemoteJWKSet(new URL(`${server.issuer}/jwks`));
});

afterAll(async () => {
  await server?.close();
  await receiver?.close();
});

let serial = 0;
async function newAccount(label: string) {
  serial += 1;
  return server.services.accounts.create({ email: `${label}-${serial}@example.com`, password, emailVerified: true, name: 'Logout Person' });
}

/** A relying party whose back-channel logout endpoint is `path` on the receiver. */
function relyingParty(path: string, sessionRequired: boolean): Promise<RelyingParty> {
  return registerRelyingParty(server, { name: `App ${path}`, backchannelLogoutUri: `${receiver.url}${path}`, backchannelLogoutSessionRequired: sessionRequired });
}

/** Signs in to `rp` in `browser` through the hosted pages and returns the tokens. */
async function signIn(browser: Browser, rp: RelyingParty, email: string) {
  const request = await authorizationRequest(rp, { scope: 'openid' });
  const journey = await walk(browser, server, await browser.get(request.url), email, password);
  return exchangeCode(rp, request, callbackUrl(journey.response));
}

/** RP-initiated logout in `browser`, answering "Sign out" (of the provider, the whole session). */
async function logOutFrom(browser: Browser, rp: RelyingParty, idToken: string): Promise<void> {
  const page = await browser.get(oidc.buildEndSessionUrl(rp.config, { id_token_hint: idToken, post_logout_redirect_uri: POST_LOGOUT_URI }));
  expect(page.status).toBe(200);
  const form = readForm(await page.text(), page.url);
  const out = await browser.follow(await browser.post(form.action, { ...form.fields, logout: 'yes' }), server.issuer);
  expect(callbackUrl(out).toString()).toBe(POST_LOGOUT_URI);
}

/** Validates a logout token as a relying party must (Back-Channel Logout 1.0, section 2.6). */
async function verifyLogoutToken(received: Received, rp: RelyingParty): Promise<JWTPayload> {
  expect(received.contentType).toBe('application/x-www-form-urlencoded');
  const { payload, protectedHeader } = await jwtVerify(received.token, jwks, {
    issuer: server.issuer, audience: rp.client.client_id, typ: 'logout+jwt', algorithms: ['ES256'], requiredClaims: ['iat', 'exp', 'jti'],
  });
  expect(protectedHeader.kid).toEqual(expect.any(String));
  expect(payload.events).toEqual({ [BACKCHANNEL_LOGOUT_EVENT]: {} });
  expect(payload).not.toHaveProperty('nonce');
  expect(payload.exp!).toBeGreaterThan(payload.iat!);
  expect(payload.iat!).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 5);
  return payload;
}

/** Waits (bounded) until the queue in MongoDB is empty: every delivery made or given up. */
async function queueDrained(): Promise<void> {
  for (let waited = 0; waited < 45_000; waited += 50) {
    if (await server.services.logoutDeliveries.pending() === 0) return;
    await sleep(50);
  }
  throw new Error('logout deliveries still pending');
}

test('discovery advertises back-channel logout with sessions', async () => {
  const metadata = await (await fetch(`${server.issuer}/.well-known/openid-configuration`)).json() as Record<string, unknown>;
  expect(metadata).toMatchObject({ backchannel_logout_supported: true, backchannel_logout_session_supported: true });
});

test('a logout URI must be https, or http on loopback; session_required needs a URI', async () => {
  const { clients } = server.services;
  const base = { name: 'Bad', redirectUris: ['http://127.0.0.1:9/callback'] };
  await expect(clients.create({ ...base, backchannelLogoutUri: 'http://app.example.com/logout' })).rejects.toThrow(/https/);
  await expect(clients.create({ ...base, backchannelLogoutUri: 'https://app.example.com/logout#x' })).rejects.toThrow(/fragment/);
  await expect(clients.create({ ...base, backchannelLogoutSessionRequired: true })).rejects.toThrow(/backchannel-logout-uri/);
  const created = await clients.create({ ...base, backchannelLogoutUri: 'https://app.example.com/logout', backchannelLogoutSessionRequired: true });
  expect(created).toMatchObject({ backchannel_logout_uri: 'https://app.example.com/logout', backchannel_logout_session_required: true });
  const removed = await clients.update(created.client_id, { backchannelLogoutUri: null });
  expect(removed).not.toHaveProperty('backchannel_logout_uri');
  expect(removed).not.toHaveProperty('backchannel_logout_session_required');
});

test('RP-initiated logout POSTs a logout token with the session\'s sid to the app', async () => {
  const rp = await relyingParty('/rp-initiated', true);
  const person = await newAccount('rp-initiated');
  const browser = new Browser();
  const tokens = await signIn(browser, rp, person.email);
  const { sid } = tokens.claims()!;
  expect(sid).toEqual(expect.any(String));
  await logOutFrom(browser, rp, tokens.id_token!);
  const [received] = await receiver.waitFor('/rp-initiated');
  expect(await verifyLogoutToken(received!, rp)).toMatchObject({ sub: person.id, sid });
});

test('"sign out everywhere" tells the app, by sub alone when it registered no session requirement', async () => {
  const rp = await relyingParty('/everywhere', false);
  const person = await newAccount('everywhere');
  await signIn(new Browser(), rp, person.email);
  // The service call behind the account page's button.
  await server.services.accounts.signOutEverywhere(person.id);
  const [received] = await receiver.waitFor('/everywhere');
  const payload = await verifyLogoutToken(received!, rp);
  expect(payload.sub).toBe(person.id);
  expect(payload).not.toHaveProperty('sid');
});

test('disabling an account tells every app its sessions signed in to', async () => {
  const rp = await relyingParty('/disabled', true);
  const person = await newAccount('disabled');
  const first = await signIn(new Browser(), rp, person.email);
  const second = await signIn(new Browser(), rp, person.email);
  await server.services.accounts.setDisabled(person.id, true);
  const received = await receiver.waitFor('/disabled', 2);
  const sids = await Promise.all(received.map(async (r) => (await verifyLogoutToken(r, rp)).sid));
  expect(sids.sort()).toEqual([first.claims()!.sid, second.claims()!.sid].sort());
});

test('an administrator ending one session tells the app about that session only', async () => {
  const rp = await relyingParty('/revoke-session', true);
  const person = await newAccount('revoke-session');
  const ended = await signIn(new Browser(), rp, person.email);
  const kept = await signIn(new Browser(), rp, person.email);
  const sessions = await server.services.store.sessionsOf(person.id);
  const session = sessions.find(({ payload }) => JSON.stringify(payload).includes(String(ended.claims()!.sid)));
  expect(await server.services.store.endSession(person.id, session!.id)).toBe(true);
  const [received] = await receiver.waitFor('/revoke-session');
  expect(await verifyLogoutToken(received!, rp)).toMatchObject({ sub: person.id, sid: ended.claims()!.sid });
  await queueDrained();
  expect(receiver.at('/revoke-session')).toHaveLength(1);
  expect(kept.claims()!.sid).not.toBe(ended.claims()!.sid);
});

test('two apps in one session each get exactly one logout token', async () => {
  const one = await relyingParty('/session-one', true);
  const two = await relyingParty('/session-two', false);
  const person = await newAccount('two-apps');
  const browser = new Browser();
  const tokens = await signIn(browser, one, person.email);
  await signIn(browser, two, person.email);
  await logOutFrom(browser, one, tokens.id_token!);
  const [toOne] = await receiver.waitFor('/session-one');
  const [toTwo] = await receiver.waitFor('/session-two');
  expect(await verifyLogoutToken(toOne!, one)).toMatchObject({ sub: person.id, sid: tokens.claims()!.sid });
  expect(await verifyLogoutToken(toTwo!, two)).toMatchObject({ sub: person.id });
  await queueDrained();
  expect(receiver.at('/session-one')).toHaveLength(1);
  expect(receiver.at('/session-two')).toHaveLength(1);
});

test('an app that fails (500, then no answer) gets the token on a retry, kept in MongoDB in between', async () => {
  const rp = await relyingParty('/flaky', true);
  // A 500, then no answer at all until the app "recovers" below.
  receiver.script('/flaky', ['fail'], 'hang');
  const person = await newAccount('flaky');
  await signIn(new Browser(), rp, person.email);
  await server.services.accounts.signOutEverywhere(person.id);
  await receiver.waitFor('/flaky', 1);
  // Between attempts, the delivery waits in the database (so a restart or another instance
  // carries on), without the token: nothing can have succeeded yet.
  const waiting = await server.services.connection.collection(DELIVERY_COLLECTION).find({ clientId: rp.client.client_id }).toArray();
  expect(waiting).toHaveLength(1);
  expect(waiting[0]).toMatchObject({ sub: person.id, attempts: expect.any(Number) });
  expect(JSON.stringify(waiting)).not.toContain(receiver.at('/flaky')[0]!.token);
  // The unanswered attempt ends at the provider's timeout; the app then recovers.
  await receiver.waitFor('/flaky', 1, 'hang');
  receiver.script('/flaky', [], 'ok');
  const received = await receiver.waitFor('/flaky', 1, 'ok');
  await queueDrained();
  expect(receiver.at('/flaky', 'ok')).toHaveLength(1);
  expect(received.at(-1)!.answer).toBe('ok');
  // Every attempt carries a freshly signed token of its own.
  const payloads = await Promise.all(received.map((r) => verifyLogoutToken(r, rp)));
  expect(new Set(payloads.map((p) => p.jti)).size).toBe(received.length);
  expect(payloads.every((p) => p.sub === person.id && typeof p.sid === 'string')).toBe(true);
  expect(logLines.some((line) => line.includes('back-channel logout not delivered; will retry'))).toBe(true);
});

test('an app that always fails is given up after the last attempt, with a log line and no token in any log', async () => {
  const rp = await relyingParty('/down', false);
  receiver.script('/down', Array<Answer>(DELIVERY.maxAttempts + 2).fill('fail'));
  const person = await newAccount('down');
  await signIn(new Browser(), rp, person.email);
  await server.services.accounts.setDisabled(person.id, true);
  await receiver.waitFor('/down', DELIVERY.maxAttempts);
  await queueDrained();
  expect(receiver.at('/down')).toHaveLength(DELIVERY.maxAttempts);
  const givenUp = logLines.filter((line) => line.includes('back-channel logout given up')).map((line) => JSON.parse(line) as Record<string, unknown>);
  expect(givenUp).toEqual(expect.arrayContaining([expect.objectContaining({ clientId: rp.client.client_id, attempts: DELIVERY.maxAttempts })]));
  for (const { token } of receiver.received) {
    expect(logLines.some((line) => line.includes(token))).toBe(false);
  }
});
