/**
 * The happy path a relying party lives on, end to end through real HTTP: discovery, hosted login
 * and consent, code + PKCE, ID token validation, userinfo, refresh with rotation, introspection,
 * revocation, RP-initiated logout, client_credentials.
 */
import * as oidc from 'openid-client';
import { Browser, readForm } from './support/browser.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, POST_LOGOUT_URI, registerRelyingParty, REDIRECT_URI, signIn,
  type RelyingParty,
} from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

let server: TestServer;
let rp: RelyingParty;
let accountId: string;
const email = 'ada@example.com';
const password = 'correct horse battery staple';

beforeAll(async () => {
  server = await startTestServer();
  rp = await registerRelyingParty(server);
  accountId = (await server.services.accounts.create({ email, password, name: 'Ada Lovelace', emailVerified: true })).id;
});

afterAll(async () => {
  await server?.close();
});

test('discovery advertises a code-only, PKCE S256 provider with the RFC 9207 iss parameter', async () => {
  const metadata = rp.config.serverMetadata();
  expect(metadata.issuer).toBe(server.issuer);
  expect(metadata.response_types_supported).toEqual(['code']);
  expect(metadata.code_challenge_methods_supported).toEqual(['S256']);
  expect(metadata.grant_types_supported).not.toContain('implicit');
  expect(metadata.grant_types_supported).not.toContain('password');
  expect(metadata.authorization_response_iss_parameter_supported).toBe(true);
  expect(metadata.id_token_signing_alg_values_supported).toEqual(expect.arrayContaining(['ES256', 'EdDSA', 'RS256']));

  // Served from memory after the first request: the same document, cacheable, readable cross-origin.
  const again = await fetch(`${server.issuer}/.well-known/openid-configuration`);
  expect(await again.json()).toEqual(metadata);
  expect(again.headers.get('cache-control')).toBe('public, max-age=300');
  expect(again.headers.get('access-control-allow-origin')).toBe('*');

  const jwksResponses = [await fetch(metadata.jwks_uri!), await fetch(metadata.jwks_uri!)];
  for (const response of jwksResponses) expect(response.headers.get('content-type')).toMatch(/^application\/jwk-set\+json/);
  const jwks = await jwksResponses[1]!.json() as { keys: Record<string, unknown>[] };
  expect(jwks.keys.map((k) => k.alg)).toEqual(['ES256', 'EdDSA', 'RS256']);
  for (const key of jwks.keys) expect(key).not.toHaveProperty('d');
});

test('a user signs in through the hosted pages and the client gets, uses, refreshes and revokes tokens', async () => {
  const browser = new Browser();
  const request = await authorizationRequest(rp);
  const loginPage = await browser.follow(await browser.get(request.url), server.issuer);
  const html = await loginPage.clone().text();
  expect(loginPage.status).toBe(200);
  expect(html).toMatch(/<input[^>]*name="email"[^>]*autocomplete="username"/);
  expect(html).toMatch(/<input[^>]*name="password"[^>]*autocomplete="current-password"/);
  expect(html).toMatch(/<label for="email">/);
  expect(loginPage.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");

  const form = readForm(html, loginPage.url);
  const consentPage = await browser.follow(await browser.post(form.action, { ...form.fields, email: 'ADA@example.com', password }), server.issuer);
  const consentHtml = await consentPage.text();
  expect(consentPage.status).toBe(200);
  expect(consentHtml).toContain('Test RP');
  expect(consentHtml).toContain('See your email address');
  expect(consentHtml).toMatch(/value="allow"/);
  expect(consentHtml).toMatch(/value="deny"/);

  const consent = readForm(consentHtml, consentPage.url);
  const back = await browser.follow(await browser.post(consent.action, { ...consent.fields, decision: 'allow' }), server.issuer);
  const callback = callbackUrl(back);
  expect(`${callback.origin}${callback.pathname}`).toBe(REDIRECT_URI);
  expect(callback.searchParams.get('iss')).toBe(server.issuer);

  const tokens = await exchangeCode(rp, request, callback);
  const claims = tokens.claims()!;
  expect(claims.sub).toBe(accountId);
  expect(claims.iss).toBe(server.issuer);
  expect(claims.aud).toBe(rp.client.client_id);
  expect(JSON.parse(Buffer.from(tokens.id_token!.split('.')[0]!, 'base64url').toString()).alg).toBe('ES256');
  expect(tokens.refresh_token).toEqual(expect.any(String));

  const userinfo = await oidc.fetchUserInfo(rp.config, tokens.access_token, accountId);
  expect(userinfo).toMatchObject({ sub: accountId, email, email_verified: true, name: 'Ada Lovelace' });
  expect(userinfo).not.toHaveProperty('roles');

  const refreshed = await oidc.refreshTokenGrant(rp.config, tokens.refresh_token!);
  expect(refreshed.access_token).not.toBe(tokens.access_token);
  expect(refreshed.refresh_token).not.toBe(tokens.refresh_token);

  const active = await oidc.tokenIntrospection(rp.config, refreshed.access_token);
  expect(active).toMatchObject({ active: true, sub: accountId, client_id: rp.client.client_id });

  await oidc.tokenRevocation(rp.config, refreshed.access_token);
  expect((await oidc.tokenIntrospection(rp.config, refreshed.access_token)).active).toBe(false);
  await expect(oidc.fetchUserInfo(rp.config, refreshed.access_token, accountId)).rejects.toThrow();

  // RP-initiated logout: confirmation page, then back to the registered post-logout URI.
  const logoutUrl = oidc.buildEndSessionUrl(rp.config, { id_token_hint: tokens.id_token!, post_logout_redirect_uri: POST_LOGOUT_URI, state: 'bye' });
  const logoutPage = await browser.follow(await browser.get(logoutUrl), server.issuer);
  expect(logoutPage.status).toBe(200);
  const logoutForm = readForm(await logoutPage.text(), logoutPage.url);
  const loggedOut = await browser.follow(await browser.post(logoutForm.action, { ...logoutForm.fields, logout: 'yes' }), server.issuer);
  const landing = callbackUrl(loggedOut);
  expect(`${landing.origin}${landing.pathname}`).toBe(POST_LOGOUT_URI);
  expect(landing.searchParams.get('state')).toBe('bye');

  // The session is gone: a new authorization request asks for the password again.
  const again = await browser.follow(await browser.get((await authorizationRequest(rp)).url), server.issuer);
  expect(await again.text()).toMatch(/name="password"/);
});

test('the roles claim is released only to clients allowed the roles scope', async () => {
  const adminId = (await server.services.accounts.create({ email: 'root@example.com', password, roles: ['admin'] })).id;
  const trusted = await registerRelyingParty(server, { name: 'Admin console', scope: 'openid roles' });
  const request = await authorizationRequest(trusted, { scope: 'openid roles' });
  const tokens = await exchangeCode(trusted, request, callbackUrl(await signIn(new Browser(), server, request.url, 'root@example.com', password)));
  expect(await oidc.fetchUserInfo(trusted.config, tokens.access_token, adminId)).toMatchObject({ roles: ['admin'] });

  // The ordinary client cannot even ask for it.
  const denied = await authorizationRequest(rp, { scope: 'openid roles' });
  const response = await new Browser().get(denied.url);
  const location = new URL(response.headers.get('location')!);
  expect(location.searchParams.get('error')).toBe('invalid_scope');
});

test('a client registered for RS256 gets RS256 ID tokens, and the setting survives an update', async () => {
  const legacy = await registerRelyingParty(server, { name: 'Legacy app', idTokenSigningAlg: 'RS256' });
  await server.services.clients.update(legacy.client.client_id, { name: 'Legacy app (renamed)' });
  const request = await authorizationRequest(legacy);
  const tokens = await exchangeCode(legacy, request, callbackUrl(await signIn(new Browser(), server, request.url, email, password)));
  expect(JSON.parse(Buffer.from(tokens.id_token!.split('.')[0]!, 'base64url').toString()).alg).toBe('RS256');
  expect(tokens.claims()!.sub).toBe(accountId);
  await expect(server.services.clients.create({ name: 'x', redirectUris: [REDIRECT_URI], idTokenSigningAlg: 'HS256' }))
    .rejects.toMatchObject({ code: 'invalid_client_metadata' });
});

test('a confidential service client gets tokens with client_credentials; a user client cannot', async () => {
  const service = await registerRelyingParty(server, { name: 'Batch job', grantTypes: ['client_credentials'], scope: 'openid' });
  const token = await oidc.clientCredentialsGrant(service.config, {});
  expect(token.token_type.toLowerCase()).toBe('bearer');
  expect(token.expires_in).toBeGreaterThan(0);
  const introspected = await oidc.tokenIntrospection(service.config, token.access_token);
  expect(introspected).toMatchObject({ active: true, client_id: service.client.client_id });
  expect(introspected.sub).toBeUndefined();

  // oidc-provider answers invalid_request (not RFC 6749's unauthorized_client) here.
  await expect(oidc.clientCredentialsGrant(rp.config, {})).rejects.toMatchObject({
    error: 'invalid_request', error_description: 'requested grant type is not allowed for this client',
  });
});

test('the health endpoints: live, and ready (MongoDB and Redis, from the last ping); /healthz is ready', async () => {
  for (const path of ['/healthz', '/healthz/ready']) {
    const response = await fetch(`${server.issuer}${path}`);
    expect(response.status).toBe(200);
    const body = await response.json() as { checkedAt: string };
    expect(body).toEqual({ status: 'ok', mongodb: 'ok', redis: 'ok', checkedAt: expect.any(String) });
    expect(Date.now() - Date.parse(body.checkedAt)).toBeLessThan(5000);
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(response.headers.get('cache-control')).toBe('no-store');
  }
  const live = await fetch(`${server.issuer}/healthz/live`);
  expect([live.status, await live.json()]).toEqual([200, { status: 'ok' }]);
});

test('a well-formed X-Request-Id is kept, anything else is replaced', async () => {
  const kept = await fetch(`${server.issuer}/healthz`, { headers: { 'x-request-id': 'lb-1234abcd' } });
  expect(kept.headers.get('x-request-id')).toBe('lb-1234abcd');
  const replaced = await fetch(`${server.issuer}/healthz`, { headers: { 'x-request-id': 'has spaces and ; semicolons' } });
  expect(replaced.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
});
