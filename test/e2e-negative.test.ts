/**
 * Everything that must fail, and fail safely: bad credentials without enumeration, redirect URI
 * near-misses, PKCE, code replay and races, refresh-token reuse, disabled accounts, deny,
 * CSRF, operator injection and oversized bodies.
 */
import * as oidc from 'openid-client';
import { LOGIN_FAILED } from '../src/interactions/routes.ts';
import { Browser, readForm } from './support/browser.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, REDIRECT_URI, signIn, submitLogin,
  type RelyingParty,
} from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

let server: TestServer;
let rp: RelyingParty;
const email = 'grace@example.com';
const password = 'a perfectly long password';

beforeAll(async () => {
  server = await startTestServer();
  rp = await registerRelyingParty(server);
  await server.services.accounts.create({ email, password, emailVerified: true });
});

afterAll(async () => {
  await server?.close();
});

async function codeCallback(): Promise<{ request: Awaited<ReturnType<typeof authorizationRequest>>; callback: URL }> {
  const request = await authorizationRequest(rp);
  return { request, callback: callbackUrl(await signIn(new Browser(), server, request.url, email, password)) };
}

async function failedLogin(mail: string, pass: string): Promise<{ status: number; text: string; ms: number }> {
  const browser = new Browser();
  const page = await openLoginPage(browser, server, (await authorizationRequest(rp)).url);
  const started = performance.now();
  const response = await submitLogin(browser, server, page, mail, pass);
  const ms = performance.now() - started;
  // Strip the per-request parts (interaction id, CSRF token, CSP nonce) before comparing pages.
  const text = (await response.text()).replace(/interaction[/=][\w-]+/g, 'interaction/UID').replace(/value="[\w-]{30,}"/g, 'value="T"')
    .replace(/nonce="[^"]+"/g, 'nonce="N"');
  return { status: response.status, text, ms };
}

test('a wrong password and an unknown email get the same answer in about the same time', async () => {
  const wrong: number[] = [];
  const unknown: number[] = [];
  let wrongPage = '';
  let unknownPage = '';
  for (let i = 0; i < 4; i += 1) {
    const a = await failedLogin(email, 'not the password at all');
    const b = await failedLogin(`nobody${i}@example.com`, 'not the password at all');
    expect(a.status).toBe(401);
    expect(b.status).toBe(401);
    wrong.push(a.ms);
    unknown.push(b.ms);
    wrongPage = a.text.replace(email, 'EMAIL');
    unknownPage = b.text.replace(`nobody${i}@example.com`, 'EMAIL');
  }
  expect(wrongPage).toContain(LOGIN_FAILED);
  expect(unknownPage).toBe(wrongPage);
  const median = (xs: number[]) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  // Both pay for one argon2id verification; without the dummy hash the unknown email would be ~10x faster.
  expect(median(unknown) / median(wrong)).toBeGreaterThan(0.5);
  expect(median(unknown) / median(wrong)).toBeLessThan(2);
});

test.each([
  ['a different path', 'http://127.0.0.1:9/other'],
  ['a trailing slash', `${REDIRECT_URI}/`],
  ['a changed case', REDIRECT_URI.replace('callback', 'Callback')],
  ['an extra query', `${REDIRECT_URI}?next=/admin`],
  ['a different port', REDIRECT_URI.replace(':9/', ':10/')],
])('a redirect_uri with %s is refused without redirecting', async (_label, redirectUri) => {
  const request = await authorizationRequest(rp, { redirect_uri: redirectUri });
  const response = await new Browser().get(request.url);
  expect(response.status).toBe(400);
  expect(response.headers.get('location')).toBeNull();
  expect(await response.text()).toContain('redirect_uri');
});

test('an authorization request without PKCE is refused', async () => {
  const request = await authorizationRequest(rp);
  request.url.searchParams.delete('code_challenge');
  request.url.searchParams.delete('code_challenge_method');
  const callback = callbackUrl(await new Browser().get(request.url));
  expect(callback.searchParams.get('error')).toBe('invalid_request');
  expect(callback.searchParams.get('error_description')).toMatch(/PKCE/);
});

test('a wrong or missing PKCE verifier does not redeem the code', async () => {
  const { request, callback } = await codeCallback();
  await expect(exchangeCode(rp, { ...request, verifier: oidc.randomPKCECodeVerifier() }, callback))
    .rejects.toMatchObject({ error: 'invalid_grant' });

  const second = await codeCallback();
  const response = await fetch(rp.config.serverMetadata().token_endpoint!, {
    method: 'POST',
    headers: { authorization: basic(rp), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: second.callback.searchParams.get('code')!, redirect_uri: REDIRECT_URI }),
  });
  expect(response.status).toBe(400);
  expect(await response.json()).toMatchObject({ error: 'invalid_grant' });
});

function basic({ client }: RelyingParty): string {
  const encode = (s: string) => encodeURIComponent(s);
  return `Basic ${Buffer.from(`${encode(client.client_id)}:${encode(client.client_secret!)}`).toString('base64')}`;
}

function redeem(code: string, verifier: string): Promise<Response> {
  return fetch(rp.config.serverMetadata().token_endpoint!, {
    method: 'POST',
    headers: { authorization: basic(rp), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier }),
  });
}

test('a replayed code is refused and revokes the tokens issued with it', async () => {
  const { request, callback } = await codeCallback();
  const tokens = await exchangeCode(rp, request, callback);
  expect((await oidc.tokenIntrospection(rp.config, tokens.access_token)).active).toBe(true);

  const replay = await redeem(callback.searchParams.get('code')!, request.verifier);
  expect(replay.status).toBe(400);
  expect(await replay.json()).toMatchObject({ error: 'invalid_grant' });
  expect((await oidc.tokenIntrospection(rp.config, tokens.access_token)).active).toBe(false);
  await expect(oidc.refreshTokenGrant(rp.config, tokens.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
});

test('twenty parallel redemptions of one code yield exactly one token response', async () => {
  const { request, callback } = await codeCallback();
  const code = callback.searchParams.get('code')!;
  const responses = await Promise.all(Array.from({ length: 20 }, () => redeem(code, request.verifier)));
  const statuses = responses.map((r) => r.status);
  expect(statuses.filter((s) => s === 200)).toHaveLength(1);
  expect(statuses.filter((s) => s === 400)).toHaveLength(19);
  for (const response of responses.filter((r) => r.status === 400)) {
    expect(await response.json()).toMatchObject({ error: 'invalid_grant' });
  }
  // The losing redemptions are replays, so the grant is revoked and the one response is worthless.
  const winner = await responses.find((r) => r.status === 200)!.json() as { access_token: string; refresh_token: string };
  expect((await oidc.tokenIntrospection(rp.config, winner.access_token)).active).toBe(false);
  await expect(oidc.refreshTokenGrant(rp.config, winner.refresh_token)).rejects.toMatchObject({ error: 'invalid_grant' });
});

test('a reused refresh token is refused and revokes the grant', async () => {
  const { request, callback } = await codeCallback();
  const first = await exchangeCode(rp, request, callback);
  const second = await oidc.refreshTokenGrant(rp.config, first.refresh_token!);
  await expect(oidc.refreshTokenGrant(rp.config, first.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
  // The grant is gone: the rotated token and its access token die with it.
  await expect(oidc.refreshTokenGrant(rp.config, second.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
  expect((await oidc.tokenIntrospection(rp.config, second.access_token)).active).toBe(false);
});

test('a disabled account cannot sign in, and its refresh tokens stop working', async () => {
  const mail = 'ex-employee@example.com';
  await server.services.accounts.create({ email: mail, password });
  const request = await authorizationRequest(rp);
  const tokens = await exchangeCode(rp, request, callbackUrl(await signIn(new Browser(), server, request.url, mail, password)));
  await server.services.accounts.setDisabled(mail, true);

  const attempt = await failedLogin(mail, password);
  expect(attempt.status).toBe(401);
  expect(attempt.text).toContain(LOGIN_FAILED);
  await expect(oidc.refreshTokenGrant(rp.config, tokens.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });

  // Enabling it again does not revive what was issued before.
  await server.services.accounts.setDisabled(mail, false);
  await expect(oidc.refreshTokenGrant(rp.config, tokens.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
  expect((await oidc.tokenIntrospection(rp.config, tokens.access_token)).active).toBe(false);
});

test('an administrator password reset signs the account out everywhere', async () => {
  const mail = 'compromised@example.com';
  await server.services.accounts.create({ email: mail, password });
  const browser = new Browser();
  const request = await authorizationRequest(rp);
  const tokens = await exchangeCode(rp, request, callbackUrl(await signIn(browser, server, request.url, mail, password)));
  await server.services.accounts.setPassword(mail, 'a brand new long password');

  await expect(oidc.refreshTokenGrant(rp.config, tokens.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
  expect((await oidc.tokenIntrospection(rp.config, tokens.access_token)).active).toBe(false);
  // The browser's session is gone too: the next authorization request asks for the password.
  const next = await openLoginPage(browser, server, (await authorizationRequest(rp)).url);
  expect(await next.text()).toMatch(/name="password"/);
});

test('deny at consent returns access_denied (with iss) to the client', async () => {
  const request = await authorizationRequest(rp);
  const callback = callbackUrl(await signIn(new Browser(), server, request.url, email, password, 'deny'));
  expect(callback.searchParams.get('error')).toBe('access_denied');
  expect(callback.searchParams.get('state')).toBe(request.state);
  expect(callback.searchParams.get('iss')).toBe(server.issuer);
  expect(callback.searchParams.get('code')).toBeNull();
});

test('a form without its CSRF token is refused', async () => {
  const browser = new Browser();
  const page = await openLoginPage(browser, server, (await authorizationRequest(rp)).url);
  const form = readForm(await page.text(), page.url);
  const missing = await browser.post(form.action, { email, password });
  expect(missing.status).toBe(403);
  expect(missing.headers.get('location')).toBeNull();
  const forged = await browser.post(form.action, { _csrf: 'x'.repeat(form.fields._csrf!.length), email, password });
  expect(forged.status).toBe(403);
  // The genuine token still works afterwards: nothing was consumed by the refused attempts.
  const ok = await browser.post(form.action, { ...form.fields, email, password });
  expect(ok.status).toBe(303);
});

test('MongoDB operators in form or JSON input are a failed sign-in', async () => {
  const browser = new Browser();
  const page = await openLoginPage(browser, server, (await authorizationRequest(rp)).url);
  const form = readForm(await page.text(), page.url);
  const csrf = encodeURIComponent(form.fields._csrf!);

  const asForm = await browser.post(form.action, `_csrf=${csrf}&email[$ne]=x&password[$ne]=x`);
  expect(asForm.status).toBe(401);
  expect(await asForm.text()).toContain(LOGIN_FAILED);

  const asJson = await browser.post(form.action, JSON.stringify({ _csrf: form.fields._csrf, email: { $gt: '' }, password: { $gt: '' } }), 'application/json');
  expect(asJson.status).toBe(401);
  expect(await asJson.text()).toContain(LOGIN_FAILED);

  const extraKey = await browser.post(form.action, JSON.stringify({ _csrf: form.fields._csrf, email, password, $where: '1' }), 'application/json');
  expect(extraKey.status).toBe(401);
});

test('an oversized body is refused with 413 by the body parser, before the sign-in handler', async () => {
  const browser = new Browser();
  const page = await openLoginPage(browser, server, (await authorizationRequest(rp)).url);
  const form = readForm(await page.text(), page.url);
  const response = await browser.post(form.action, { ...form.fields, email, password: 'p'.repeat(200_000) });
  expect(response.status).toBe(413);
  expect(await response.text()).toContain('too large');
  // The form still works for a normal submission afterwards.
  const ok = await browser.post(form.action, { ...form.fields, email, password });
  expect(ok.status).toBe(303);
});
