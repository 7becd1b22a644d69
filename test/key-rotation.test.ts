/**
 * Signing-key rotation end to end: the `keys` CLI as a real child process against the server's
 * database, two server instances picking up each step without restart, and three verifiers that
 * keep a cached key set: openid-client (an RP validating ID tokens), the documents API (JWT access
 * tokens), and a strict RP that fetches /jwks only when its Cache-Control max-age has run out.
 * None of them may reject a token at any point of rotate → promote → retire.
 */
import { jest } from '@jest/globals';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import * as oidc from 'openid-client';
import { generate } from 'otplib';
import { Browser } from './support/browser.ts';
import { authorizationRequest, callbackUrl, exchangeCode, registerRelyingParty, signIn, type RelyingParty } from './support/flows.ts';
import { runScript } from './support/cli.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { testMongoUri } from './support/env.ts';
import mongoose from 'mongoose';
import { KeyRing, throwawayJwks } from '../src/oidc/keys.ts';
import { SecretBox } from '../src/security/secrets.ts';

jest.setTimeout(300_000);
const secretsKey = (id: string, fill: number) => `${id}:${Buffer.alloc(32, fill).toString('base64')}`;

// openid-client keeps a key set for 5 minutes and refetches for an unknown kid only once its copy
// is a minute old: the shortest max-age it honours is 60 s (the default 300 s matches its cache).
const KEY_ENV = {
  KEYS_REFRESH_SECONDS: '1', JWKS_CACHE_SECONDS: '60', TTL_ACCESS_TOKEN: '60', TTL_ID_TOKEN: '60', TTL_CLIENT_CREDENTIALS: '60',
  SECRETS_KEY: secretsKey('k1', 1),
};
/** promote waits JWKS_CACHE_SECONDS + KEYS_REFRESH_SECONDS; retire the longest TTL + refresh + 5 s of clock tolerance. */
const PUBLISH_MS = 61_000;
const SIGNED_LIFETIME_MS = 66_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface KeyView { kid: string; alg: string; state: string; promotableAt?: string; retirableAt?: string }

const keys = (env: Record<string, string>, ...args: string[]) =>
  runScript('keys', [...args, '--actor', 'rotation-test'], { ...process.env, NODE_ENV: 'test', LOG_LEVEL: 'error', ...env });

async function keysOk<T>(env: Record<string, string>, ...args: string[]): Promise<T> {
  const result = await keys(env, ...args);
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as T;
}

/** A relying party that caches /jwks for exactly its max-age and never refetches early. */
class StrictCachingRp {
  private cached: { jwks: JSONWebKeySet; until: number } | undefined;
  fetches = 0;
  private readonly issuer: string;
  constructor(issuer: string) {
    this.issuer = issuer;
  }

  async verify(token: string): Promise<void> {
    const now = Date.now();
    if (!this.cached || now >= this.cached.until) {
      const response = await fetch(`${this.issuer}/jwks`);
      const maxAge = Number(/max-age=(\d+)/.exec(response.headers.get('cache-control') ?? '')?.[1]);
      expect(maxAge).toBeGreaterThan(0);
      this.cached = { jwks: (await response.json()) as JSONWebKeySet, until: now + maxAge * 1000 };
      this.fetches += 1;
    }
    await jwtVerify(token, createLocalJWKSet(this.cached.jwks), { issuer: this.issuer });
  }
}

let server: TestServer;
let second: TestServer;
let rp: RelyingParty;
let machine: RelyingParty;
let strict: StrictCachingRp;
let env: Record<string, string>;
const email = 'rotation@example.com';
const password = 'correct horse battery staple 7';

beforeAll(async () => {
  const mongoUri = testMongoUri('keys');
  env = { ...KEY_ENV, MONGODB_URI: mongoUri };
  server = await startTestServer(env);
  // The same deployment: one issuer, one database; the second instance's API fetches the JWKS
  // from the issuer like any resource server would.
  second = await startTestServer({ ...env, ISSUER: server.issuer });
  await server.services.accounts.create({ email, password, emailVerified: true });
  rp = await registerRelyingParty(server);
  // openid-client then checks every ID token's signature against the key set it has cached.
  oidc.enableNonRepudiationChecks(rp.config);
  machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'documents:read' });
  strict = new StrictCachingRp(server.issuer);
});

afterAll(async () => {
  await second?.close();
  await server?.close();
});

async function idToken(): Promise<string> {
  const request = await authorizationRequest(rp);
  const tokens = await exchangeCode(rp, request, callbackUrl(await signIn(new Browser(), server, request.url, email, password)));
  return tokens.id_token!;
}

async function accessToken(): Promise<string> {
  return (await oidc.clientCredentialsGrant(machine.config, { scope: 'documents:read' })).access_token;
}

/** Every verifier accepts every token given (the documents API on both instances). */
async function expectAccepted(idTokens: string[], accessTokens: string[]): Promise<void> {
  for (const token of idTokens) await strict.verify(token);
  for (const token of accessTokens) {
    await strict.verify(token);
    for (const instance of [server, second]) {
      const response = await fetch(`${instance.issuer}/api/v1/documents`, { headers: { authorization: `Bearer ${token}` } });
      expect(response.status).toBe(200);
    }
  }
}

const kidOf = (token: string) => decodeProtectedHeader(token).kid;

async function jwksKids(instance: TestServer): Promise<string[]> {
  return ((await (await fetch(`${instance.issuer}/jwks`)).json()) as JSONWebKeySet).keys.map((k) => k.kid!);
}

async function until(condition: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(200);
  }
}

test('a whole rotate → promote → retire cycle: cached verifiers keep accepting, new tokens carry the new kid', async () => {
  const before = await keysOk<KeyView[]>(env, 'list');
  const oldKid = before.find((k) => k.alg === 'ES256' && k.state === 'active')!.kid;
  const oldTokens = { id: [await idToken()], access: [await accessToken()] };
  expect(kidOf(oldTokens.id[0]!)).toBe(oldKid);
  expect(kidOf(oldTokens.access[0]!)).toBe(oldKid);
  await expectAccepted(oldTokens.id, oldTokens.access);

  const rotated = await keysOk<KeyView[]>(env, 'rotate', '--alg', 'ES256');
  expect(rotated).toEqual([expect.objectContaining({ alg: 'ES256', state: 'next' })]);
  const newKid = rotated[0]!.kid;
  // Published on both instances within KEYS_REFRESH_SECONDS, but not signing.
  await until(async () => (await jwksKids(server)).includes(newKid) && (await jwksKids(second)).includes(newKid), 5_000);
  expect(kidOf(await accessToken())).toBe(oldKid);

  const early = await keys(env, 'promote', newKid);
  expect(early.code).not.toBe(0);
  expect(early.stderr).toMatch(/published long enough/);
  await expectAccepted(oldTokens.id, oldTokens.access);

  const promotableAt = new Date(rotated[0]!.promotableAt!).getTime();
  expect(promotableAt - Date.now()).toBeLessThanOrEqual(PUBLISH_MS);
  await sleep(promotableAt - Date.now() + 200);
  // Tokens signed by the old key just before it steps down: in use across the promotion.
  const lastOld = { id: [await idToken()], access: [await accessToken()] };
  expect(kidOf(lastOld.access[0]!)).toBe(oldKid);
  await expectAccepted(lastOld.id, lastOld.access);
  const promoted = await keysOk<KeyView[]>(env, 'promote', newKid);
  expect(promoted.map((k) => [k.kid, k.state])).toEqual([[newKid, 'active'], [oldKid, 'retiring']]);
  await until(async () => kidOf(await accessToken()) === newKid, 5_000);
  const newTokens = { id: [await idToken()], access: [await accessToken()] };
  expect(kidOf(newTokens.id[0]!)).toBe(newKid);
  await expectAccepted([...lastOld.id, ...newTokens.id], [...lastOld.access, ...newTokens.access]);
  // The second instance signs with the new key too, once it has re-read the ring (KEYS_REFRESH_SECONDS).
  const fromSecond = async () => {
    const response = await fetch(`${second.issuer}/token`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${machine.client.client_id}:${machine.client.client_secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=client_credentials&scope=documents%3Aread',
    });
    return kidOf(((await response.json()) as { access_token: string }).access_token);
  };
  await until(async () => (await fromSecond()) === newKid, 5_000);
  expect(await fromSecond()).toBe(newKid);

  const tooSoon = await keys(env, 'retire', oldKid);
  expect(tooSoon.code).not.toBe(0);
  expect(tooSoon.stderr).toMatch(/can still be valid until/);
  const activeRefused = await keys(env, 'retire', newKid, '--force');
  expect(activeRefused.stderr).toMatch(/active ES256 key/);

  // The old tokens run out; until then the old key stays published and they keep verifying.
  const retirableAt = new Date((await keysOk<KeyView[]>(env, 'list')).find((k) => k.kid === oldKid)!.retirableAt!).getTime();
  expect(retirableAt - Date.now()).toBeLessThanOrEqual(SIGNED_LIFETIME_MS);
  await sleep(retirableAt - Date.now() - 15_000);
  await expectAccepted([...lastOld.id], [...lastOld.access, ...newTokens.access]);
  await sleep(Math.max(0, retirableAt - Date.now()) + 200);
  const retired = await keysOk<KeyView>(env, 'retire', oldKid);
  expect(retired).toMatchObject({ kid: oldKid, state: 'retired' });
  await until(async () => !(await jwksKids(server)).includes(oldKid) && !(await jwksKids(second)).includes(oldKid), 5_000);
  const latest = { id: [await idToken()], access: [await accessToken()] };
  await expectAccepted(latest.id, latest.access);
  expect(strict.fetches).toBeGreaterThan(1);

  // Each step is in the audit trail under the operator who ran it.
  const actions = (await server.services.audit.tail({ actor: 'operator:rotation-test', limit: 20 })).map((e) => [e.action, e.target]);
  expect(actions).toEqual(expect.arrayContaining([['keys.rotate', newKid], ['keys.promote', newKid], ['keys.retire', oldKid]]));
});

test('private keys, client secrets and TOTP secrets are sealed with SECRETS_KEY at rest; reseal moves them to a new key', async () => {
  const stored = await server.services.connection.collection('signing_keys').find({ state: { $in: ['next', 'active', 'retiring'] } }).toArray();
  expect(stored.length).toBeGreaterThanOrEqual(3);
  for (const doc of stored) {
    expect(String(doc.sealed)).toMatch(/^sealed:v1:k1:/);
    expect(JSON.stringify(doc)).not.toMatch(/"d":/);
  }
  const rotatedEnv = { ...env, SECRETS_KEY: `${secretsKey('k2', 2)},${KEY_ENV.SECRETS_KEY}` };
  const clients = await server.services.connection.collection('oidc_client').find({ 'payload.client_secret': { $exists: true } }).toArray();
  expect(clients.length).toBeGreaterThanOrEqual(2);
  for (const doc of clients) expect(String(doc.payload.client_secret)).toMatch(/^sealed:v1:k1:/);
  // A TOTP secret being enrolled: shown to its owner in the clear, stored sealed.
  const account = (await server.services.accounts.get(email))!;
  const enrolment = await server.services.mfa.beginEnrolment(account.id, email);
  const pending = (await server.services.connection.collection('accounts').findOne({ _id: account.id as never }))!.mfaPending;
  expect(pending.secret).toMatch(/^sealed:v1:k1:/);
  expect(pending.secret).not.toContain(enrolment.secret);
  expect((await server.services.mfa.pendingEnrolment(account.id, email))?.secret).toBe(enrolment.secret);
  // Confirming it opens the sealed secret to check the code, and keeps it sealed once enabled.
  await server.services.mfa.confirmEnrolment(account.id, await generate({ secret: enrolment.secret }));
  const enabled = (await server.services.connection.collection('accounts').findOne({ _id: account.id as never }))!.mfa;
  expect(enabled.secret).toMatch(/^sealed:v1:k1:/);
  expect(await keysOk(rotatedEnv, 'reseal')).toEqual({ resealed: { signingKeys: stored.length, clientSecrets: clients.length, totpSecrets: 1 } });
  const resealed = await server.services.connection.collection('signing_keys').find({ state: { $in: ['next', 'active', 'retiring'] } }).toArray();
  expect(resealed.map((doc) => SecretBox.keyIdOf(String(doc.sealed)))).toEqual(resealed.map(() => 'k2'));
  // A process without the new key cannot open them, and says which key id it needs.
  const without = await keys(env, 'show');
  expect(without.code).not.toBe(0);
  expect(without.stderr).toMatch(/SECRETS_KEY id "k2"/);
  expect((await keysOk<{ keys: unknown[] }>(rotatedEnv, 'show')).keys.length).toBe(resealed.length);
});

describe('automatic rotation (KEY_ROTATION_DAYS)', () => {
  let first: TestServer;
  let other: TestServer;

  beforeAll(async () => {
    const autoEnv = { ...KEY_ENV, JWKS_CACHE_SECONDS: '1', KEY_ROTATION_DAYS: '1', MONGODB_URI: testMongoUri('autokeys') };
    first = await startTestServer(autoEnv);
    other = await startTestServer({ ...autoEnv, ISSUER: first.issuer });
  });

  afterAll(async () => {
    await other?.close();
    await first?.close();
  });

  const ring = () => first.services.connection.collection('signing_keys');

  test('rotates, promotes and retires on schedule, once across two instances, and audits each step', async () => {
    const [initial] = await Promise.all([ring().find({ state: 'active' }).toArray()]);
    expect(initial).toHaveLength(3);
    // Keys promoted two days ago are due.
    const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000);
    await ring().updateMany({ state: 'active' }, { $set: { promotedAt: twoDaysAgo, createdAt: twoDaysAgo } });

    await until(async () => (await ring().countDocuments({ state: 'retiring' })) === 3, 20_000);
    const active = await ring().find({ state: 'active' }).toArray();
    expect(active).toHaveLength(3);
    expect(active.map((k) => String(k._id))).not.toEqual(expect.arrayContaining(initial.map((k) => String(k._id))));
    // Exactly one new key per algorithm, though both instances tick every second.
    expect((await ring().find({ state: { $exists: true } }).toArray()).length).toBe(6);
    const newEs256 = String(active.find((k) => k.alg === 'ES256')!._id);
    await until(async () => (await jwksKids(other)).includes(newEs256), 5_000);

    // Once the replaced keys' tokens have run out they are retired, still once.
    await ring().updateMany({ state: 'retiring' }, { $set: { demotedAt: twoDaysAgo } });
    await until(async () => (await ring().countDocuments({ state: 'retired' })) === 3, 20_000);
    await until(async () => (await jwksKids(first)).length === 3 && (await jwksKids(other)).length === 3, 5_000);
    expect(await ring().countDocuments({ state: 'retired', sealed: { $exists: true } })).toBe(0);

    const steps = (await first.services.audit.tail({ actor: 'system:key-rotation', limit: 50 })).map((e) => e.action);
    expect(steps.filter((a) => a === 'keys.rotate')).toHaveLength(3);
    expect(steps.filter((a) => a === 'keys.promote')).toHaveLength(3);
    expect(steps.filter((a) => a === 'keys.retire')).toHaveLength(3);
  });
});

describe('the key ring on its own', () => {
  const timings = { publishSeconds: 0, signedLifetimeSeconds: 0 };

  async function withRing(run: (ring: KeyRing, connection: mongoose.Connection) => Promise<void>): Promise<void> {
    const connection = await mongoose.createConnection(testMongoUri('ring')).asPromise();
    try {
      await run(new KeyRing(connection, new SecretBox(undefined), timings), connection);
    } finally {
      await connection.dropDatabase().catch(() => {});
      await connection.close();
    }
  }

  test('instances generating the first keys at once end up with one set', async () => {
    await withRing(async (ring, connection) => {
      const others = [0, 1, 2].map(() => new KeyRing(connection, new SecretBox(undefined), timings));
      const results = await Promise.all([ring, ...others].map((r) => r.generate()));
      expect(results.filter((r) => r.created)).toHaveLength(1);
      expect((await ring.list()).map((k) => k.state)).toEqual(['active', 'active', 'active']);
      // A later call (a restart, the compose `keys` job) changes nothing.
      expect(await ring.generate()).toEqual({ created: false });
      expect(await ring.list()).toHaveLength(3);
    });
  });

  test('the single JWKS document of earlier versions is taken over, kept for them until one of its keys retires', async () => {
    await withRing(async (ring, connection) => {
      const legacy = throwawayJwks();
      await connection.collection('signing_keys').insertOne({ _id: 'current' as never, keys: legacy.keys, createdAt: new Date() });
      const jwks = await ring.privateJwks();
      expect(jwks?.keys.map((k) => k.kid)).toEqual(legacy.keys.map((k) => k.kid));
      expect(await connection.collection('signing_keys').findOne({ _id: 'current' as never })).toMatchObject({ expandedAt: expect.any(Date) });
      // Rotating stays possible, and the earlier version's document goes with its first retired key.
      const [next] = await ring.rotate(['ES256']);
      await ring.promote(next!.kid);
      await ring.retire(legacy.keys[0]!.kid!);
      expect(await connection.collection('signing_keys').findOne({ _id: 'current' as never })).toBeNull();
      expect((await ring.privateJwks())?.keys.map((k) => k.kid)).toEqual([legacy.keys[1]!.kid, legacy.keys[2]!.kid, next!.kid]);
    });
  });

  test('rotate needs an active key, and a second operator waits for the step in progress', async () => {
    await withRing(async (ring, connection) => {
      await expect(ring.rotate(['ES256'])).rejects.toThrow(/no active ES256 key/);
      await ring.generate();
      await connection.collection('locks').insertOne({ _id: 'key-rotation' as never, owner: 'someone else', until: new Date(Date.now() + 60_000) });
      await expect(ring.rotate(['ES256'])).rejects.toThrow(/another key rotation step is running/);
      expect((await ring.list()).filter((k) => k.state === 'next')).toHaveLength(0);
    });
  });
});
