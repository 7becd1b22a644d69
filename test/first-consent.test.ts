/**
 * An account's first consent to an app is asked on the interaction of its password
 * (src/interactions/first-consent.ts); anything less plain goes through oidc-provider's own
 * consent step. Both end in the same grant, and the page shows what the grant will hold.
 */
import * as oidc from 'openid-client';
import { Browser, readForm } from './support/browser.ts';
import { authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, submitLogin, type RelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

let server: TestServer;
let rp: RelyingParty;
const password = 'Quartz-Meadow-Lantern-73';
let n = 0;

beforeAll(async () => {
  server = await startTestServer();
  rp = await registerRelyingParty(server, { scope: 'openid email profile offline_access' });
});

afterAll(async () => {
  await server?.close();
});

async function newAccount(): Promise<{ id: string; email: string }> {
  n += 1;
  const email = `first-consent-${n}@example.com`;
  return { id: (await server.services.accounts.create({ email, password, emailVerified: true })).id, email };
}

/** Signs in with the password and returns the page the browser lands on, with where it went. */
async function afterPassword(browser: Browser, url: URL, email: string) {
  const login = await openLoginPage(browser, server, url);
  const loginUid = new URL(login.url).pathname.split('/')[2];
  const answer = await submitLogin(browser, server, login, email, password);
  const landed = await browser.follow(answer, server.issuer);
  return { loginUid, answer, landed, uid: new URL(landed.url || server.issuer).pathname.split('/')[2] };
}

test('the first consent is asked on the password\'s own interaction, shows the requested scopes, and its answer finishes the sign-in', async () => {
  const account = await newAccount();
  const request = await authorizationRequest(rp, { scope: 'openid email' });
  request.url.searchParams.delete('prompt');
  const browser = new Browser();
  const { loginUid, answer, landed, uid } = await afterPassword(browser, request.url, account.email);
  expect([answer.status, answer.headers.get('location')]).toEqual([303, `/interaction/${loginUid}`]);
  expect(uid).toBe(loginUid);
  const page = await landed.text();
  expect(page).toContain('See your email address');
  expect(page).not.toContain('Stay connected');

  const form = readForm(page, landed.url);
  expect(form.action).toBe(`${server.issuer}/interaction/${uid}/consent`);
  // The form carries the decision only; what is granted comes from the interaction.
  expect((await browser.post(form.action, { ...form.fields, decision: 'allow', scope: 'openid email profile' })).status).toBe(400);
  const back = await browser.follow(await browser.post(form.action, { ...form.fields, decision: 'allow' }), server.issuer);
  const tokens = await exchangeCode(rp, request, callbackUrl(back));
  expect(tokens.scope?.split(' ').sort()).toEqual(['email', 'openid']);
  expect(tokens.claims()).toMatchObject({ sub: account.id, email: account.email });

  const grants = await server.services.store.grantsOf(account.id, rp.client.client_id);
  expect(grants).toHaveLength(1);
  expect(String((grants[0]!.payload.openid as { scope: string }).scope).split(' ').sort()).toEqual(['email', 'openid']);

  // Remembered in the next browser: the password's answer goes straight back to the app.
  const again = await authorizationRequest(rp, { scope: 'openid email' });
  again.url.searchParams.delete('prompt');
  const next = await afterPassword(new Browser(), again.url, account.email);
  expect(next.landed.status).toBe(303);
  await exchangeCode(rp, again, callbackUrl(next.landed));
  expect(await server.services.store.grantsOf(account.id, rp.client.client_id)).toHaveLength(1);
});

test('auth_time is when the password was given, however long the consent page stayed open', async () => {
  const account = await newAccount();
  const request = await authorizationRequest(rp, { scope: 'openid email offline_access' }); // prompt=consent keeps offline_access
  const browser = new Browser();
  const before = Math.floor(Date.now() / 1000);
  const { landed } = await afterPassword(browser, request.url, account.email);
  const passwordDone = Math.floor(Date.now() / 1000);
  const page = await landed.text();
  expect(page).toContain('Stay connected');
  await new Promise((resolve) => setTimeout(resolve, 2100));
  const form = readForm(page, landed.url);
  const tokens = await exchangeCode(rp, request, callbackUrl(await browser.follow(await browser.post(form.action, { ...form.fields, decision: 'allow' }), server.issuer)));
  expect(tokens.refresh_token).toBeDefined();
  const authTime = Number(tokens.claims()!.auth_time);
  expect(authTime).toBeGreaterThanOrEqual(before);
  expect(authTime).toBeLessThanOrEqual(passwordDone);
});

test('signing the account out everywhere ends a consent still waiting for its answer', async () => {
  const account = await newAccount();
  const request = await authorizationRequest(rp, { scope: 'openid email' });
  const browser = new Browser();
  const { landed } = await afterPassword(browser, request.url, account.email);
  const form = readForm(await landed.text(), landed.url);
  await server.services.store.revokeAccount(account.id); // what a password reset or "sign out everywhere" does
  const answer = await browser.post(form.action, { ...form.fields, decision: 'allow' });
  expect(answer.status).toBe(400);
  expect(await server.services.store.grantsOf(account.id)).toEqual([]);
});

test('denying the first consent ends the request with access_denied and grants nothing', async () => {
  const account = await newAccount();
  const request = await authorizationRequest(rp, { scope: 'openid profile' });
  const browser = new Browser();
  const { landed } = await afterPassword(browser, request.url, account.email);
  const form = readForm(await landed.text(), landed.url);
  const back = await browser.follow(await browser.post(form.action, { ...form.fields, decision: 'deny' }), server.issuer);
  expect(callbackUrl(back).searchParams.get('error')).toBe('access_denied');
  expect(await server.services.store.grantsOf(account.id)).toEqual([]);
});

test('a request oidc-provider must judge (the claims parameter) gets its own consent step on a new interaction', async () => {
  const account = await newAccount();
  const request = await authorizationRequest(rp, { scope: 'openid', claims: JSON.stringify({ id_token: { email: null } }) });
  const browser = new Browser();
  const { loginUid, answer, landed, uid } = await afterPassword(browser, request.url, account.email);
  expect(answer.headers.get('location')).toMatch(/\/auth\//);
  expect(uid).not.toBe(loginUid);
  const form = readForm(await landed.text(), landed.url);
  const back = await browser.follow(await browser.post(form.action, { ...form.fields, decision: 'allow' }), server.issuer);
  const tokens = await exchangeCode(rp, request, callbackUrl(back));
  expect(tokens.claims()).toMatchObject({ sub: account.id, email: account.email });
  expect(await oidc.fetchUserInfo(rp.config, tokens.access_token, account.id)).toMatchObject({ sub: account.id });
});
