/**
 * The device authorization grant (RFC 8628) end to end: a device client (openid-client's
 * initiateDeviceAuthorization / pollDeviceAuthorizationGrant) and a person on the hosted /device
 * pages (real HTTP form posts with cookies): the code from verification_uri_complete or typed,
 * the confirmation naming the app, the ordinary sign-in pages, and the tokens the poll receives.
 * Refusals too: a wrong code, a cancelled confirmation (the poll ends in access_denied), the
 * per-address limit on codes tried (429), and a client not registered for the grant.
 *
 * Each test speaks from an address of its own (X-Forwarded-For, trusted here): the suites share
 * one Redis, where the limit counts per address.
 */
import { jest } from '@jest/globals';
import { randomInt } from 'node:crypto';
import * as oidc from 'openid-client';
import { DEVICE_CODE_GRANT } from '../src/oidc/clients.ts';
import { Browser, readForm } from './support/browser.ts';
import { registerRelyingParty, type RelyingParty } from './support/flows.ts';
import { pageText, walk } from './support/hosted-pages.ts';
import { startTestServer, type TestServer } from './support/server.ts';

jest.setTimeout(120_000);

const password = 'Meadow-Copper-Anchor-47-Violin';
const CODES_PER_IP = 3;
const USER_CODE = /^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$/;

let server: TestServer;
let tv: RelyingParty;
/** Ends the polls of a test that failed before its device finished. */
const polls = new AbortController();

beforeAll(async () => {
  server = await startTestServer({ TRUST_PROXY: 'true', RATE_LIMIT_DEVICE_CODE_PER_IP: `${CODES_PER_IP}/300` });
  tv = await registerRelyingParty(server, { name: 'Living Room TV', isPublic: true, grantTypes: [DEVICE_CODE_GRANT, 'refresh_token'] });
});

afterAll(async () => {
  polls.abort();
  await server?.close();
});

let serial = 0;
async function newAccount(label: string) {
  serial += 1;
  return server.services.accounts.create({ email: `${label}-${serial}@example.com`, password, emailVerified: true, name: 'Device Person' });
}

/** A browser of a person at an address nobody else uses. */
const personBrowser = () => new Browser({ 'x-forwarded-for': `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}` });

/** The device starts, and polls until the person has finished (or refused). */
async function startDevice(scope = 'openid email') {
  const authorization = await oidc.initiateDeviceAuthorization(tv.config, { scope });
  const polled = oidc.pollDeviceAuthorizationGrant(tv.config, authorization, undefined, { signal: polls.signal });
  // Observed at once, so a refusal is never an unhandled rejection while the test is elsewhere.
  const outcome = polled.then((tokens) => ({ tokens }), (error: unknown) => ({ error: error as { error?: string } }));
  return { authorization, outcome };
}

/** Types `userCode` on the /device page. */
async function typeCode(browser: Browser, userCode: string): Promise<Response> {
  const page = await browser.get(`${server.issuer}/device`);
  expect(page.status).toBe(200);
  const form = readForm(await page.text(), page.url);
  return browser.post(form.action, { ...form.fields, user_code: userCode });
}

/** Opens verification_uri_complete; its page posts the code by itself (a browser runs its script). */
async function openCompleteLink(browser: Browser, link: string): Promise<Response> {
  const page = await browser.get(link);
  expect(page.status).toBe(200);
  const form = readForm(await page.text(), page.url);
  return browser.post(form.action, form.fields);
}

test('discovery names the device endpoint and grant; the response carries verification_uri_complete', async () => {
  const metadata = tv.config.serverMetadata();
  expect(metadata.device_authorization_endpoint).toBe(`${server.issuer}/device/auth`);
  expect(metadata.grant_types_supported).toContain(DEVICE_CODE_GRANT);
  // No poll: nobody finishes this one.
  const authorization = await oidc.initiateDeviceAuthorization(tv.config, { scope: 'openid' });
  expect(authorization.user_code).toMatch(USER_CODE);
  expect(authorization.verification_uri).toBe(`${server.issuer}/device`);
  const complete = new URL(authorization.verification_uri_complete!);
  expect(`${complete.origin}${complete.pathname}`).toBe(`${server.issuer}/device`);
  expect(complete.searchParams.get('user_code')).toBe(authorization.user_code);
});

test('from verification_uri_complete: confirm the app, sign in, and the poll gets tokens naming the user', async () => {
  const person = await newAccount('complete');
  const { authorization, outcome } = await startDevice('openid email offline_access');
  const browser = personBrowser();
  const confirm = await openCompleteLink(browser, authorization.verification_uri_complete!);
  expect(confirm.status).toBe(200);
  const text = await pageText(confirm);
  expect(text).toContain('Sign in to Living Room TV on your device?');
  expect(text).toContain(authorization.user_code);
  const form = readForm(await confirm.clone().text(), confirm.url);
  const journey = await walk(browser, server, await browser.post(form.action, form.fields), person.email, password);
  expect(journey.steps).toEqual(['login', 'consent']);
  expect(journey.response.status).toBe(200);
  expect(await pageText(journey.response)).toContain('You are signed in to <strong>Living Room TV</strong> on your device.');

  const result = await outcome;
  if (!('tokens' in result)) throw new Error(`the poll failed: ${result.error.error}`);
  expect(result.tokens.claims()).toMatchObject({ sub: person.id, email: person.email, aud: tv.client.client_id, iss: server.issuer });
  expect(result.tokens.refresh_token).toEqual(expect.any(String));
  // The code is spent: a second visit is refused.
  const again = await openCompleteLink(personBrowser(), authorization.verification_uri_complete!);
  expect(again.status).toBe(400);
  expect(await pageText(again)).toContain('That code has already been used');
});

test('a typed code may differ in case and dashes; cancelling the confirmation ends the poll in access_denied', async () => {
  const { authorization, outcome } = await startDevice();
  const browser = personBrowser();
  const confirm = await typeCode(browser, authorization.user_code.replace('-', '').toLowerCase());
  expect(await pageText(confirm)).toContain('Sign in to Living Room TV on your device?');
  const form = readForm(await confirm.clone().text(), confirm.url);
  const cancelled = await browser.post(form.action, { ...form.fields, abort: 'yes' });
  expect(cancelled.status).toBe(200);
  expect(await pageText(cancelled)).toContain('The sign-in was cancelled');
  const result = await outcome;
  expect('error' in result && result.error.error).toBe('access_denied');
});

test('a wrong code shows the page again with an error, and nothing is signed in', async () => {
  const browser = personBrowser();
  const refused = await typeCode(browser, 'BCDF-GHJK');
  expect(refused.status).toBe(400);
  const text = await pageText(refused);
  expect(text).toContain('That code is not valid');
  expect(text).toMatch(/<input[^>]*name="user_code"[^>]*value="BCDF-GHJK"/);
  const empty = await typeCode(browser, '');
  expect(empty.status).toBe(400);
  expect(await pageText(empty)).toContain('Enter the code shown on your device.');
});

test('codes tried from one address are limited: a styled 429 after the limit, while good codes do not count', async () => {
  const browser = personBrowser();
  // A real code, confirmed and cancelled, is given back to the limit: it leaves every attempt.
  const { authorization, outcome } = await startDevice();
  const confirm = await typeCode(browser, authorization.user_code);
  const form = readForm(await confirm.clone().text(), confirm.url);
  await browser.post(form.action, { ...form.fields, abort: 'yes' });
  await outcome;
  for (let attempt = 0; attempt < CODES_PER_IP; attempt += 1) {
    expect((await typeCode(browser, `BCDF-${'GHJK'.slice(attempt)}${'X'.repeat(attempt)}`)).status).toBe(400);
  }
  const limited = await typeCode(browser, 'ZZZZ-ZZZZ');
  expect(limited.status).toBe(429);
  expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
  expect(limited.headers.get('content-type')).toMatch(/text\/html/);
  expect(await pageText(limited)).toContain('Too many device codes were tried from your network');
  // Another address is not affected.
  expect((await typeCode(personBrowser(), 'BCDF-GHJK')).status).toBe(400);
});

test('a client not registered for the device grant is refused at the device endpoint', async () => {
  const web = await registerRelyingParty(server, { name: 'Web only' });
  // oidc-provider's answer (RFC 6749 section 5.2 shape), before any code is issued.
  await expect(oidc.initiateDeviceAuthorization(web.config, { scope: 'openid' })).rejects.toMatchObject({
    error: 'invalid_request', error_description: `${DEVICE_CODE_GRANT} is not allowed for this client`,
  });
});
