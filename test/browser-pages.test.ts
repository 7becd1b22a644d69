/**
 * The hosted pages in a real browser (headless Chromium through playwright-core): a person
 * connects a TV with the device authorization grant, from verification_uri_complete (whose
 * auto-submitting page must run under our Content-Security-Policy) and by typing the code, signs
 * in and consents on the ordinary pages, and the device's poll (openid-client) gets the tokens.
 * Every page passes axe-core's WCAG 2.1 A/AA rules, and the browser reports no CSP violation,
 * script error or failed load (the favicon included) on any of them.
 */
import { jest } from '@jest/globals';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import * as oidc from 'openid-client';
import { generate } from 'otplib';
import { chromium, type Browser, type Page } from 'playwright-core';
import { DEVICE_CODE_GRANT } from '../src/oidc/clients.ts';
import { registerRelyingParty, type RelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

jest.setTimeout(120_000);

/** Found (or installed from Debian) by test/support/global-setup.ts; CHROMIUM_PATH names another. */
const CHROMIUM = process.env.TEST_CHROMIUM_PATH;
const axeSource = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const email = 'viewer@example.com';
const password = 'Harbor-Lantern-Quartz-58';

let server: TestServer;
let tv: RelyingParty;
let browser: Browser;
const polls = new AbortController();

beforeAll(async () => {
  server = await startTestServer();
  await server.services.accounts.create({ email, password, name: 'Viewer', emailVerified: true });
  tv = await registerRelyingParty(server, { name: 'Living Room TV', isPublic: true, grantTypes: [DEVICE_CODE_GRANT, 'refresh_token'] });
  if (!CHROMIUM) throw new Error('no Chromium: install Debian\'s chromium package, or set CHROMIUM_PATH');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});

afterAll(async () => {
  polls.abort();
  await browser?.close();
  await server?.close();
});

/** A page that records what the browser complains about: CSP violations, script errors, failed loads. */
async function watchedPage(): Promise<{ page: Page; problems: string[] }> {
  const page = await (await browser.newContext()).newPage();
  const problems: string[] = [];
  // A failed load is logged twice: as a console error (which names no URL) and as a response.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) problems.push(message.text());
  });
  page.on('response', (response) => { if (response.status() >= 400) problems.push(`${response.status()} ${new URL(response.url()).pathname}`); });
  page.on('pageerror', (error) => problems.push(error.message));
  return { page, problems };
}

/** axe-core's WCAG 2.1 A/AA violations on the page, run in the page by the test harness (not by the page's scripts). */
async function accessibilityViolations(page: Page): Promise<string[]> {
  await page.evaluate(axeSource);
  const results = await page.evaluate(() => (globalThis as unknown as { axe: { run: (context: unknown, options: unknown) => Promise<{ violations: { id: string; nodes: unknown[] }[] }> } })
    .axe.run((globalThis as unknown as { document: unknown }).document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } }));
  return results.violations.map((v) => `${v.id} (${v.nodes.length})`);
}

const checked: string[] = [];
async function expectAccessible(page: Page, name: string): Promise<void> {
  expect({ page: name, violations: await accessibilityViolations(page) }).toEqual({ page: name, violations: [] });
  checked.push(name);
}

/** Signs in; consents when asked (the first time the app is used), and ends on the page `done` matches. */
async function signIn(page: Page, done = /\/device\//): Promise<void> {
  await page.waitForSelector('input[name=email]');
  await expectAccessible(page, 'login');
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  const allow = page.locator('button[name=decision][value=allow]');
  await Promise.race([allow.waitFor(), page.waitForURL(done)]);
  if (await allow.isVisible()) {
    await expectAccessible(page, 'consent');
    await Promise.all([page.waitForURL(done), allow.click()]);
  }
}

test('a TV is connected from verification_uri_complete: confirm, sign in, consent, and the poll gets tokens', async () => {
  const device = await oidc.initiateDeviceAuthorization(tv.config, { scope: 'openid profile offline_access' });
  const tokens = oidc.pollDeviceAuthorizationGrant(tv.config, device, undefined, { signal: polls.signal });
  const { page, problems } = await watchedPage();

  await page.goto(device.verification_uri_complete!);
  // oidc-provider's page posts the code by script: it must run under the page's CSP.
  await page.waitForSelector('text=Sign in to Living Room TV on your device?');
  await expect(page.locator('code').textContent()).resolves.toBe(device.user_code);
  await expectAccessible(page, 'device confirm');
  await Promise.all([page.waitForURL(/\/interaction\//), page.click('button:not([name=abort])[form="op.deviceConfirmForm"]')]);

  await signIn(page);
  await page.waitForSelector('h1');
  await expect(page.locator('h1').textContent()).resolves.toMatch(/signed in/i);
  await expectAccessible(page, 'device done');

  const result = await tokens;
  expect(result.claims()).toMatchObject({ aud: tv.client.client_id, name: 'Viewer' });
  expect(result.refresh_token).toEqual(expect.any(String));
  expect(problems).toEqual([]);
});

test('a code typed on /device, in lower case and without its dash, works; a wrong one is refused on the page', async () => {
  const device = await oidc.initiateDeviceAuthorization(tv.config, { scope: 'openid' });
  const tokens = oidc.pollDeviceAuthorizationGrant(tv.config, device, undefined, { signal: polls.signal });
  const { page, problems } = await watchedPage();

  await page.goto(`${server.issuer}/device`);
  await expectAccessible(page, 'device code');
  await page.fill('input[name=user_code]', 'BBBB-BBBB');
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  await expect(page.locator('[role=alert]').textContent()).resolves.toMatch(/not valid/);
  await expectAccessible(page, 'device code, refused');

  await page.fill('input[name=user_code]', device.user_code.replace('-', '').toLowerCase());
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  await page.waitForSelector('text=Sign in to Living Room TV on your device?');
  await Promise.all([page.waitForURL(/\/interaction\//), page.click('button:not([name=abort])[form="op.deviceConfirmForm"]')]);
  await signIn(page);
  await expect(tokens.then((t) => t.claims()?.aud)).resolves.toBe(tv.client.client_id);
  // The wrong code's page, and nothing else.
  expect(problems).toEqual(['400 /device']);
  expect(checked).toEqual(expect.arrayContaining(['device confirm', 'login', 'consent', 'device done', 'device code', 'device code, refused']));
});

test('the other pages a person meets pass the same checks: home, registration, password help, sign-out, errors, the account console and two-step verification', async () => {
  const { page, problems } = await watchedPage();
  const visits: [string, string, number][] = [
    ['home', '/', 200],
    ['register', '/register', 200],
    ['forgot password', '/forgot', 200],
    ['resend verification', '/verify-email/resend', 200],
    ['reset with a bad link', '/reset?token=not-a-token', 400],
    ['sign-out confirmation', '/session/end', 200],
    ['not found', '/no-such-page', 404],
  ];
  for (const [name, path, status] of visits) {
    const response = await page.goto(`${server.issuer}${path}`);
    expect([name, response?.status()]).toEqual([name, status]);
    await expectAccessible(page, name);
  }
  // The account console sends a signed-out visitor through the sign-in it starts itself.
  await page.goto(`${server.issuer}/account`);
  await signIn(page, new RegExp(`^${server.issuer}/account$`));
  await expectAccessible(page, 'account console');

  // Two-step verification: the QR code (a data: image) shows, the key read off the page turns it
  // on, the recovery codes are shown once, and the next sign-in asks for a code.
  await page.goto(`${server.issuer}/account/mfa/setup`);
  expect(await page.locator('img').evaluate((img) => (img as unknown as { naturalWidth: number }).naturalWidth)).toBeGreaterThan(0);
  await expectAccessible(page, 'two-step set-up');
  const secret = (await page.locator('code').textContent())!.replace(/\s/g, '');
  await page.fill('input[name=code]', await generate({ secret }));
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  await expectAccessible(page, 'recovery codes');
  const second = await watchedPage();
  await second.page.goto(`${server.issuer}/account`);
  await second.page.waitForSelector('input[name=email]');
  await second.page.fill('input[name=email]', email);
  await second.page.fill('input[name=password]', password);
  await Promise.all([second.page.waitForLoadState('load'), second.page.click('button[type=submit]')]);
  await second.page.waitForSelector('input[name=code]');
  await expectAccessible(second.page, 'second step');
  expect(problems.filter((p) => !/^4\d\d \/(reset|no-such-page)$/.test(p))).toEqual([]);
  expect(second.problems).toEqual([]);
});
