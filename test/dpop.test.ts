/**
 * DPoP (RFC 9449) end to end: openid-client's DPoP handle obtains sender-constrained tokens from
 * the provider (authorization code and refresh), and the documents API accepts them only with a
 * valid proof of the same key, for the same request, once. Negative proofs are signed with jose,
 * exactly as a client library would sign them, each with one defect.
 */
import { randomUUID, createHash } from 'node:crypto';
import { calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import * as oidc from 'openid-client';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { startServer, type RunningServer } from '../src/server.ts';
import { freePort } from '../src/local/services.ts';
import { Browser } from './support/browser.ts';
import { authorizationRequest, callbackUrl, registerRelyingParty, signIn, type RelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { testRedisUrl } from './support/env.ts';

const password = 'correct horse battery staple';
const email = 'dana@example.com';
const SCOPE = 'openid offline_access documents:read documents:write';

let server: TestServer;
let rp: RelyingParty;
let keys: oidc.CryptoKeyPair;
let dpop: oidc.DPoPHandle;
let tokens: oidc.TokenEndpointResponse;
let documentsUrl: string;

const ath = (token: string) => createHash('sha256').update(token).digest('base64url');

async function codeFor(client: RelyingParty) {
  const request = await authorizationRequest(client, { scope: SCOPE });
  const callback = callbackUrl(await signIn(new Browser(), server, request.url, email, password));
  return { request, callback };
}

/** A proof as a client would sign it, for GET /api/v1/documents with the current token. */
async function proof(claims: JWTPayload = {}, signer: oidc.CryptoKeyPair = keys, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT({ jti: randomUUID(), htm: 'GET', htu: documentsUrl, iat: Math.floor(Date.now() / 1000), ath: ath(tokens.access_token), ...claims })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: await exportJWK(signer.publicKey), ...header })
    .sign(signer.privateKey);
}

async function listDocuments(authorization: string, dpopHeader?: string, base = server.issuer): Promise<Response> {
  return fetch(`${base}/api/v1/documents`, { headers: { authorization, ...(dpopHeader ? { dpop: dpopHeader } : {}) } });
}

async function expectRefused(response: Response, error: 'invalid_dpop_proof' | 'invalid_token', detail?: RegExp): Promise<void> {
  expect(response.status).toBe(401);
  const challenge = response.headers.get('www-authenticate') ?? '';
  expect(challenge).toMatch(/^DPoP /);
  expect(challenge).toContain(`error="${error}"`);
  expect(challenge).toContain('algs="ES256');
  const body = await response.json() as { type: string; detail: string };
  expect(body.type).toMatch(/invalid-token$/);
  if (detail) expect(body.detail).toMatch(detail);
}

beforeAll(async () => {
  server = await startTestServer();
  documentsUrl = `${server.issuer}/api/v1/documents`;
  await server.services.accounts.create({ email, password, name: 'Dana', emailVerified: true });
  // A public client: its refresh tokens are bound to the key as well (RFC 9449 section 5).
  rp = await registerRelyingParty(server, { isPublic: true, scope: SCOPE });
  keys = await oidc.randomDPoPKeyPair('ES256');
  dpop = oidc.getDPoPHandle(rp.config, keys);
});

afterAll(async () => {
  await server?.close();
});

test('the provider and the API say which proof algorithms they take', async () => {
  const discovery = await (await fetch(`${server.issuer}/.well-known/openid-configuration`)).json() as Record<string, unknown>;
  expect(discovery.dpop_signing_alg_values_supported).toEqual(expect.arrayContaining(['ES256', 'EdDSA', 'PS256']));
  expect(discovery.dpop_signing_alg_values_supported).not.toContain('HS256');
  const resource = await (await fetch(`${server.issuer}/.well-known/oauth-protected-resource/api`)).json() as Record<string, unknown>;
  expect(resource).toMatchObject({ dpop_bound_access_tokens_required: false, dpop_signing_alg_values_supported: expect.arrayContaining(['ES256']) });
});

describe('tokens bound at the provider', () => {
  test('authorization code with a DPoP proof: token_type DPoP, cnf.jkt is the key thumbprint', async () => {
    const { request, callback } = await codeFor(rp);
    tokens = await oidc.authorizationCodeGrant(rp.config, callback, {
      pkceCodeVerifier: request.verifier, expectedState: request.state, expectedNonce: request.nonce,
    }, undefined, { DPoP: dpop });
    expect(tokens.token_type.toLowerCase()).toBe('dpop');
    const jkt = await calculateJwkThumbprint(await exportJWK(keys.publicKey));
    expect(decodeJwt(tokens.access_token).cnf).toEqual({ jkt });
    expect(tokens.refresh_token).toEqual(expect.any(String));
  });

  test('the documents API accepts the token through fetchProtectedResource with the same handle', async () => {
    const created = await oidc.fetchProtectedResource(rp.config, tokens.access_token, new URL(documentsUrl), 'POST',
      JSON.stringify({ title: 'Bound' }), new Headers({ 'content-type': 'application/json' }), { DPoP: dpop });
    expect(created.status).toBe(201);
    const listed = await oidc.fetchProtectedResource(rp.config, tokens.access_token, new URL(`${documentsUrl}?limit=5`), 'GET', null, undefined, { DPoP: dpop });
    expect(listed.status).toBe(200);
    expect(((await listed.json()) as { items: { title: string }[] }).items.map((d) => d.title)).toEqual(['Bound']);
  });

  test('the refresh token of a public client is bound: refused without the proof or with another key', async () => {
    const other = oidc.getDPoPHandle(rp.config, await oidc.randomDPoPKeyPair('ES256'));
    for (const options of [undefined, { DPoP: other }]) {
      const refused = await oidc.refreshTokenGrant(rp.config, tokens.refresh_token!, undefined, options).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(oidc.ResponseBodyError);
      expect((refused as oidc.ResponseBodyError).error).toBe('invalid_grant');
    }
    // Refusals leave the grant alone: the key holder refreshes, and the new token is bound too.
    const refreshed = await oidc.refreshTokenGrant(rp.config, tokens.refresh_token!, undefined, { DPoP: dpop });
    expect(refreshed.token_type.toLowerCase()).toBe('dpop');
    expect(decodeJwt(refreshed.access_token).cnf).toEqual(decodeJwt(tokens.access_token).cnf);
    tokens = refreshed;
    const listed = await oidc.fetchProtectedResource(rp.config, tokens.access_token, new URL(documentsUrl), 'GET', null, undefined, { DPoP: dpop });
    expect(listed.status).toBe(200);
  });

  test('a --require-dpop client is refused at /token without a proof, and served with one', async () => {
    const strict = await registerRelyingParty(server, { isPublic: true, scope: SCOPE, requireDpop: true });
    expect((await server.services.provider.Client.find(strict.client.client_id))?.dpopBoundAccessTokens).toBe(true);
    const { request, callback } = await codeFor(strict);
    const checks = { pkceCodeVerifier: request.verifier, expectedState: request.state, expectedNonce: request.nonce };
    const refused = await oidc.authorizationCodeGrant(strict.config, callback, checks).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(oidc.ResponseBodyError);
    expect((refused as oidc.ResponseBodyError).error).toBe('invalid_dpop_proof');
    // The code was not spent by the refusal.
    const served = await oidc.authorizationCodeGrant(strict.config, callback, checks, undefined, { DPoP: oidc.getDPoPHandle(strict.config, keys) });
    expect(served.token_type.toLowerCase()).toBe('dpop');
  });
});

describe('the documents API checks every proof', () => {
  test('a hand-made proof like the library\'s is accepted (so each refusal below is about its one defect)', async () => {
    expect((await listDocuments(`DPoP ${tokens.access_token}`, await proof())).status).toBe(200);
  });

  test('the bound token as a Bearer token is refused, with or without a proof', async () => {
    await expectRefused(await listDocuments(`Bearer ${tokens.access_token}`), 'invalid_token', /DPoP-bound/);
    await expectRefused(await listDocuments(`Bearer ${tokens.access_token}`, await proof()), 'invalid_token');
  });

  test('no proof, or two', async () => {
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`), 'invalid_dpop_proof');
    const twice = await fetch(documentsUrl, { headers: [['authorization', `DPoP ${tokens.access_token}`], ['dpop', await proof()], ['dpop', await proof()]] });
    await expectRefused(twice, 'invalid_dpop_proof', /exactly one/);
  });

  test('a proof for another method or another URL', async () => {
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ htm: 'POST' })), 'invalid_dpop_proof', /htm/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ htu: `${server.issuer}/api/v1/documents/other` })), 'invalid_dpop_proof', /htu/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ htu: 'https://elsewhere.example/api/v1/documents' })), 'invalid_dpop_proof', /htu/);
    // Query and fragment are not part of the comparison (RFC 9449 section 4.3).
    expect((await listDocuments(`DPoP ${tokens.access_token}`, await proof({ htu: `${documentsUrl}?limit=1#x` }))).status).toBe(200);
  });

  test('a replayed proof (same jti) is refused', async () => {
    const once = await proof();
    expect((await listDocuments(`DPoP ${tokens.access_token}`, once)).status).toBe(200);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, once), 'invalid_dpop_proof', /used before/);
  });

  test('a proof signed by another key, or without ath, or for another token', async () => {
    const stranger = await generateKeyPair('ES256');
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({}, stranger)), 'invalid_dpop_proof', /bound to/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ ath: undefined })), 'invalid_dpop_proof', /ath/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ ath: ath('another token') })), 'invalid_dpop_proof', /ath/);
  });

  test('a stale proof, a wrong typ, a symmetric algorithm, a private key in the header', async () => {
    const now = Math.floor(Date.now() / 1000);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ iat: now - 600 })), 'invalid_dpop_proof', /iat/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ iat: now + 600 })), 'invalid_dpop_proof', /iat/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({}, keys, { typ: 'JWT' })), 'invalid_dpop_proof', /typ/);
    const hmac = await new SignJWT({ jti: randomUUID(), htm: 'GET', htu: documentsUrl, iat: now, ath: ath(tokens.access_token) })
      .setProtectedHeader({ alg: 'HS256', typ: 'dpop+jwt', jwk: { kty: 'oct' } }).sign(new TextEncoder().encode('secret-secret-secret-secret-secret'));
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, hmac), 'invalid_dpop_proof', /algorithm/);
    const extractable = await generateKeyPair('ES256', { extractable: true });
    const withPrivate = await proof({}, extractable, { jwk: await exportJWK(extractable.privateKey) });
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, withPrivate), 'invalid_dpop_proof');
  });

  test('a plain bearer token: a DPoP proof beside it is ignored, the DPoP scheme is refused', async () => {
    const plain = await registerRelyingParty(server, { isPublic: true, scope: SCOPE });
    const { request, callback } = await codeFor(plain);
    const bearer = await oidc.authorizationCodeGrant(plain.config, callback, {
      pkceCodeVerifier: request.verifier, expectedState: request.state, expectedNonce: request.nonce,
    });
    expect(bearer.token_type.toLowerCase()).toBe('bearer');
    expect(decodeJwt(bearer.access_token).cnf).toBeUndefined();
    expect((await listDocuments(`Bearer ${bearer.access_token}`, await proof({ ath: ath(bearer.access_token) }))).status).toBe(200);
    await expectRefused(await listDocuments(`DPoP ${bearer.access_token}`, await proof({ ath: ath(bearer.access_token) })), 'invalid_token', /not DPoP-bound/);
  });

  test('the scope challenge of a DPoP request is in the DPoP scheme', async () => {
    const readOnly = await registerRelyingParty(server, { isPublic: true, scope: 'openid documents:read' });
    const request = await authorizationRequest(readOnly, { scope: 'openid documents:read' });
    const callback = callbackUrl(await signIn(new Browser(), server, request.url, email, password));
    const handle = oidc.getDPoPHandle(readOnly.config, keys);
    const read = await oidc.authorizationCodeGrant(readOnly.config, callback, {
      pkceCodeVerifier: request.verifier, expectedState: request.state, expectedNonce: request.nonce,
    }, undefined, { DPoP: handle });
    const refused = await oidc.fetchProtectedResource(readOnly.config, read.access_token, new URL(documentsUrl), 'POST',
      JSON.stringify({ title: 'No' }), new Headers({ 'content-type': 'application/json' }), { DPoP: handle }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(oidc.WWWAuthenticateChallengeError);
    const [challenge] = (refused as oidc.WWWAuthenticateChallengeError).cause;
    expect(challenge).toMatchObject({ scheme: 'dpop', parameters: { error: 'insufficient_scope' } });
  });
});

describe('replay across instances', () => {
  let second: RunningServer;
  let secondUrl: string;

  beforeAll(async () => {
    // Another instance of the same provider (same database, Redis and public ISSUER), reached at
    // its own address as a load balancer would reach it.
    const port = await freePort();
    secondUrl = `http://127.0.0.1:${port}`;
    const config = loadConfig({
      NODE_ENV: 'test', ISSUER: server.issuer, HOST: '127.0.0.1', PORT: String(port), MONGODB_URI: server.services.config.mongodbUri!,
      REDIS_URL: testRedisUrl(), COOKIE_KEYS: 'test-cookie-key-0123456789abcdefghijklmnop', LOG_LEVEL: 'silent',
    });
    second = await startServer(config, createLogger('silent'));
  });

  afterAll(async () => {
    await second?.close();
  });

  test('a proof accepted by one instance is refused by the other (seen jtis are shared in Redis)', async () => {
    const once = await proof();
    // htu names the public URL (the ISSUER), not the instance's own address.
    expect((await listDocuments(`DPoP ${tokens.access_token}`, once, secondUrl)).status).toBe(200);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, once), 'invalid_dpop_proof', /used before/);
    await expectRefused(await listDocuments(`DPoP ${tokens.access_token}`, await proof({ htu: `${secondUrl}/api/v1/documents` }), secondUrl), 'invalid_dpop_proof', /htu/);
  });
});
