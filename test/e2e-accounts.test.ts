/**
 * Account self-service end to end, through the real pages, a real SMTP server (links are read
 * out of the mail the provider sent), real Redis and openid-client: registration and email
 * verification, password reset (old refresh tokens die), TOTP two-step verification with replay
 * and recovery codes, acr/amr in ID tokens, clients that require MFA, and the account page.
 */
import * as oidc from 'openid-client';
import { generate } from 'otplib';
import { Browser, readForm } from './support/browser.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, submitLogin, type RelyingParty,
} from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { linkFrom, startSmtpCapture, type SmtpCapture } from './support/smtp.ts';
import { ACR_MFA, ACR_PASSWORD } from '../src/oidc/provider.ts';

const password = 'violet staple orbit canyon';
let server: TestServer;
let smtp: SmtpCapture;
let rp: RelyingParty;

beforeAll(async () => {
  smtp = await startSmtpCapture();
  server = await startTestServer({ SMTP_URL: smtp.url });
  rp = await registerRelyingParty(server);
});

afterAll(async () => {
  await server?.close();
  await smtp?.close();
});

const mailTo = (address: string, subject: RegExp) =>
  smtp.waitFor((mail) => mail.to.includes(address) && subject.test(mail.subject));

/** Posts the first form on `page` with `fields` added to its hidden ones, following redirects. */
async function submit(browser: Browser, page: Response, fields: Record<string, string>): Promise<Response> {
  const form = readForm(await page.clone().text(), page.url);
  return browser.follow(await browser.post(form.action, { ...form.fields, ...fields }), server.issuer);
}

/** The page's text, without the per-response CSP nonce, whitespace collapsed. */
const pageText = async (response: Response) => (await response.clone().text()).replace(/nonce="[^"]*"/g, '').replace(/\s+/g, ' ');

/**
 * A relying-party sign-in through the hosted pages: password, then the code when asked for one,
 * then consent when asked. Returns the last response (the redirect to the client when it worked).
 */
async function signIn(email: string, secret: string, options: { code?: string; params?: Record<string, string>; client?: RelyingParty } = {}) {
  const client = options.client ?? rp;
  const request = await authorizationRequest(client, options.params);
  const browser = new Browser();
  let page = await browser.follow(await submitLogin(browser, server, await openLoginPage(browser, server, request.url), email, secret), server.issuer);
  if (page.status === 200 && /name="code"/.test(await page.clone().text())) {
    if (options.code === undefined) return { page, request, client };
    page = await submit(browser, page, { code: options.code });
  }
  if (page.status === 200 && /name="decision"|value="allow"/.test(await page.clone().text())) page = await submit(browser, page, { decision: 'allow' });
  return { page, request, client };
}

async function tokensFor(email: string, secret: string, options: { code?: string; params?: Record<string, string> } = {}) {
  const { page, request, client } = await signIn(email, secret, options);
  return exchangeCode(client, request, callbackUrl(page));
}

/** Signs in to /account in a fresh browser (password, and the code when asked for one). */
async function accountPage(email: string, secret: string, code?: string): Promise<{ browser: Browser; page: Response }> {
  const browser = new Browser();
  const login = await browser.follow(await browser.get(`${server.issuer}/account`), server.issuer);
  let page = await browser.follow(await submitLogin(browser, server, login, email, secret), server.issuer);
  if (code !== undefined) page = await submit(browser, page, { code });
  expect(new URL(page.url).pathname).toBe('/account');
  return { browser, page };
}

describe('registration and email verification', () => {
  test('register, receive the link by mail, verify, then sign in with email_verified', async () => {
    const browser = new Browser();
    const form = await browser.get(`${server.issuer}/register`);
    expect(form.status).toBe(200);
    const html = await form.clone().text();
    expect(html).toMatch(/name="password"[^>]*autocomplete="new-password"/);
    expect(html).toMatch(/At least 12 characters/);

    const done = await submit(browser, form, { email: 'Grace@Example.com', name: 'Grace Hopper', password });
    expect(done.status).toBe(200);
    expect(await pageText(done)).toContain('Check your inbox');

    const mail = await mailTo('grace@example.com', /confirm your email/i);
    expect(mail.html).toContain(linkFrom(mail.text, '/verify-email'));
    const link = linkFrom(mail.text, '/verify-email');
    expect(mail.text).not.toContain('Grace Hopper'); // the registrant's text stays out of the mail
    // No account until the link is followed: signing in now fails exactly like an unknown email,
    // so registering and then signing in tells nothing about which addresses have accounts.
    expect(await server.services.accounts.get('grace@example.com')).toBeUndefined();
    const early = await signIn('grace@example.com', password);
    expect(early.page.status).toBe(401);

    const confirm = await browser.get(link);
    expect(confirm.status).toBe(200);
    expect(await server.services.accounts.get('grace@example.com')).toBeUndefined(); // opening is not enough
    const verified = await submit(browser, confirm, {});
    expect(await pageText(verified)).toContain('Email verified');
    expect(await server.services.accounts.get('grace@example.com')).toMatchObject({ email_verified: true, name: 'Grace Hopper' });

    // The link is single use.
    const again = await browser.get(link);
    expect(again.status).toBe(400);

    const tokens = await tokensFor('grace@example.com', password);
    expect(tokens.claims()).toMatchObject({ amr: ['pwd'], acr: ACR_PASSWORD });
    const userinfo = await oidc.fetchUserInfo(rp.config, tokens.access_token, tokens.claims()!.sub);
    expect(userinfo).toMatchObject({ email: 'grace@example.com', email_verified: true, name: 'Grace Hopper' });
  });

  test('weak passwords are refused on the page with the reason', async () => {
    const browser = new Browser();
    for (const [weak, reason] of [['short', 'at least 12'], ['linus@example.com!!', 'email address']]) {
      const refused = await submit(browser, await browser.get(`${server.issuer}/register`), { email: 'linus@example.com', name: 'Linus', password: weak! });
      expect(refused.status).toBe(400);
      expect(await pageText(refused)).toContain(reason);
    }
    expect(await server.services.accounts.get('linus@example.com')).toBeUndefined();
  });

  test('registering a taken email answers like a new one and tells the owner by mail', async () => {
    await server.services.accounts.create({ email: 'taken@example.com', password, emailVerified: true });
    const browser = new Browser();
    const page = (address: string) => browser.get(`${server.issuer}/register`).then((form) => submit(browser, form, { email: address, name: 'Someone', password }));

    const taken = await page('taken@example.com');
    const fresh = await page('fresh@example.com');
    expect(taken.status).toBe(fresh.status);
    expect((await pageText(taken)).replace('taken@example.com', 'X')).toBe((await pageText(fresh)).replace('fresh@example.com', 'X'));
    expect((await mailTo('taken@example.com', /.*/)).subject).toMatch(/already have an account/i);
    await mailTo('fresh@example.com', /confirm your email/i);

    // Roughly the same time: both hash the password once (medians of a few tries).
    const time = async (address: string) => {
      const started = performance.now();
      await page(address);
      return performance.now() - started;
    };
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const takenMs: number[] = [];
    const freshMs: number[] = [];
    for (let i = 0; i < 5; i += 1) {
      takenMs.push(await time('taken@example.com'));
      freshMs.push(await time(`fresh${i}@example.com`));
    }
    const ratio = median(takenMs) / median(freshMs);
    expect(ratio).toBeGreaterThan(0.5);
    expect(ratio).toBeLessThan(2);
  });
});

test('REQUIRE_VERIFIED_EMAIL refuses sign-in until the address is verified, after the right password only', async () => {
  const strict = await startTestServer({ SMTP_URL: smtp.url, REQUIRE_VERIFIED_EMAIL: 'true' });
  try {
    const client = await registerRelyingParty(strict);
    await strict.services.accounts.create({ email: 'unverified@example.com', password });
    const attempt = async (secret: string) => {
      const browser = new Browser();
      const request = await authorizationRequest(client);
      return browser.follow(await submitLogin(browser, strict, await openLoginPage(browser, strict, request.url), 'unverified@example.com', secret), strict.issuer);
    };
    const right = await attempt(password);
    expect(right.status).toBe(403);
    expect(await pageText(right)).toContain('Verify your email address first');
    const wrong = await attempt('not the password at all');
    expect(wrong.status).toBe(401);
    expect(await pageText(wrong)).not.toContain('Verify your email');
  } finally {
    await strict.close();
  }
});

describe('password reset', () => {
  test('the mailed link sets a new password once, kills old refresh tokens, and sends a notice', async () => {
    const email = 'reset@example.com';
    await server.services.accounts.create({ email, password, emailVerified: true });
    const before = await tokensFor(email, password, { params: { scope: 'openid offline_access', prompt: 'consent' } });
    expect(before.refresh_token).toBeDefined();

    const browser = new Browser();
    const forgot = await browser.get(`${server.issuer}/forgot`);
    const answer = await submit(browser, forgot, { email });
    const unknown = await submit(browser, await browser.get(`${server.issuer}/forgot`), { email: 'nobody@example.com' });
    expect(answer.status).toBe(unknown.status);
    expect((await pageText(answer)).replace(email, 'X')).toBe((await pageText(unknown)).replace('nobody@example.com', 'X'));
    // Roughly the same time: the work for an existing account happens after the answer.
    const time = async (address: string) => {
      // The work done after the previous answer (token, mail) must not land in this measurement.
      await new Promise((resolve) => setTimeout(resolve, 150));
      const started = performance.now();
      await submit(browser, await browser.get(`${server.issuer}/forgot`), { email: address });
      return performance.now() - started;
    };
    const existingMs: number[] = [];
    const unknownMs: number[] = [];
    for (let i = 0; i < 5; i += 1) {
      existingMs.push(await time(email));
      unknownMs.push(await time(`nobody${i}@example.com`));
    }
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    expect(median(existingMs) / median(unknownMs)).toBeGreaterThan(0.5);
    expect(median(existingMs) / median(unknownMs)).toBeLessThan(2);
    await new Promise((resolve) => setTimeout(resolve, 1000)); // let the mails of these requests go out
    smtp.clear();
    await submit(browser, await browser.get(`${server.issuer}/forgot`), { email });

    const link = linkFrom((await mailTo(email, /reset your password/i)).text, '/reset');
    const form = await browser.get(link);
    expect(form.status).toBe(200);
    const weak = await submit(browser, form, { password: 'too short' });
    expect(weak.status).toBe(400);
    const newPassword = 'amber kettle glacier forty';
    const changed = await submit(browser, weak, { password: newPassword });
    expect(await pageText(changed)).toContain('Password changed');
    await mailTo(email, /password was changed/i);

    await expect(oidc.refreshTokenGrant(rp.config, before.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });
    expect(await server.services.accounts.authenticate(email, password)).toBeUndefined();
    expect(await server.services.accounts.authenticate(email, newPassword)).toBeDefined();
    expect((await browser.get(link)).status).toBe(400); // used
  });
});

describe('two-step verification (TOTP)', () => {
  const email = 'mfa@example.com';
  let secret: string;
  let recoveryCodes: string[];

  beforeAll(async () => {
    await server.services.accounts.create({ email, password, emailVerified: true });
  });

  test('enrol from the account page with the QR code or key, and get ten recovery codes once', async () => {
    const other = await accountPage(email, password); // another device, signed in with the password only
    const { browser } = await accountPage(email, password);
    const setup = await browser.get(`${server.issuer}/account/mfa/setup`);
    const html = await setup.clone().text();
    expect(html).toMatch(/<img src="data:image\/png;base64,/);
    secret = /<code>([A-Z2-7]+)<\/code>/.exec(html)![1]!;

    const wrong = await submit(browser, setup, { code: '000000' });
    expect(wrong.status).toBe(400);
    secret = /<code>([A-Z2-7]+)<\/code>/.exec(await wrong.clone().text())![1]!;
    const codesPage = await submit(browser, wrong, { code: await generate({ secret }) });
    recoveryCodes = [...(await codesPage.clone().text()).matchAll(/<li><code>([a-z2-7]{5}-[a-z2-7]{5})<\/code><\/li>/g)].map((m) => m[1]!);
    expect(recoveryCodes).toHaveLength(10);
    expect(await server.services.mfa.status((await server.services.accounts.get(email))!.id)).toMatchObject({ enabled: true, recoveryCodesLeft: 10 });
    await mailTo(email, /two-step/i);
    // Turning it on ended the other device's session, and kept this one.
    expect((await other.browser.get(`${server.issuer}/account`)).headers.get('location')).toBe('/account/sign-in');
    expect((await browser.get(`${server.issuer}/account`)).status).toBe(200);
  });

  test('sign-in asks for the code after the password; the ID token says otp and the MFA acr', async () => {
    const { page } = await signIn(email, password);
    const html = await page.clone().text();
    expect(html).toMatch(/<input[^>]*name="code"[^>]*autocomplete="one-time-code"/);

    // Wait for a fresh time step: the enrolment used the current one.
    await new Promise((resolve) => setTimeout(resolve, 30_000 - (Date.now() % 30_000) + 200));
    const code = await generate({ secret });
    const tokens = await tokensFor(email, password, { code });
    expect(tokens.claims()).toMatchObject({ acr: ACR_MFA });
    expect(tokens.claims()!.amr).toEqual(expect.arrayContaining(['pwd', 'otp']));

    // The same code again: refused, whoever presents it.
    const replay = await signIn(email, password, { code });
    expect(replay.page.status).toBe(401);
    expect(await pageText(replay.page)).toMatch(/code/i);
  }, 60_000);

  test('a recovery code works once, not twice', async () => {
    const tokens = await tokensFor(email, password, { code: recoveryCodes[0]!.toUpperCase() });
    expect(tokens.claims()!.amr).toEqual(expect.arrayContaining(['pwd']));
    const again = await signIn(email, password, { code: recoveryCodes[0]! });
    expect(again.page.status).toBe(401);
  });

  test('a password reset does not bypass the second step', async () => {
    const browser = new Browser();
    await submit(browser, await browser.get(`${server.issuer}/forgot`), { email });
    const link = linkFrom((await mailTo(email, /reset your password/i)).text, '/reset');
    const newPassword = 'quiet harbour lantern seven';
    await submit(browser, await browser.get(link), { password: newPassword });
    const { page } = await signIn(email, newPassword);
    expect(await page.clone().text()).toMatch(/name="code"/);
    await server.services.accounts.setPassword(email, password);
  });

  test('acr_values is only a preference; an essential acr or a client that requires MFA refuses a password-only account', async () => {
    const plain = 'plain@example.com';
    await server.services.accounts.create({ email: plain, password, emailVerified: true });
    // Core 3.1.2.1: acr_values states a preference, so the password alone still signs in (and says so).
    const byAcr = await signIn(plain, password, { params: { acr_values: ACR_MFA } });
    expect((await exchangeCode(byAcr.client, byAcr.request, callbackUrl(byAcr.page))).claims()).toMatchObject({ acr: ACR_PASSWORD });
    const essential = JSON.stringify({ id_token: { acr: { essential: true, value: ACR_MFA } } });
    const byClaim = await signIn(plain, password, { params: { claims: essential } });
    expect(await pageText(byClaim.page)).toMatch(/two-step verification/i);

    const strict = await registerRelyingParty(server, { requireMfa: true });
    const byClient = await signIn(plain, password, { client: strict });
    expect(await pageText(byClient.page)).toMatch(/two-step verification/i);
    expect(byClient.page.headers.get('location')).toBeNull();
  });
});

test('wrong codes lock the second step with growing waits; the right code works after the wait', async () => {
  const strict = await startTestServer({ SMTP_URL: smtp.url, LOCKOUT_THRESHOLD: '3', LOCKOUT_BASE_SECONDS: '2' });
  try {
    const client = await registerRelyingParty(strict);
    const account = await strict.services.accounts.create({ email: 'guessed@example.com', password, emailVerified: true });
    const { secret } = await strict.services.mfa.beginEnrolment(account.id, account.email);
    // Enrol with the previous step's code, so the current step is still free for the sign-in.
    await strict.services.mfa.confirmEnrolment(account.id, await generate({ secret, epoch: Math.floor(Date.now() / 1000) - 30 }));

    const browser = new Browser();
    const request = await authorizationRequest(client);
    let page = await browser.follow(await submitLogin(browser, strict, await openLoginPage(browser, strict, request.url), account.email, password), strict.issuer);
    const codeForm = readForm(await page.clone().text(), page.url);
    const tryCode = (code: string) => browser.post(codeForm.action, { ...codeForm.fields, code });
    for (let i = 0; i < 3; i += 1) expect((await tryCode('000000')).status).toBe(401);
    page = await tryCode(await generate({ secret }));
    expect(page.status).toBe(429);
    const wait = Number(page.headers.get('retry-after'));
    expect(wait).toBeGreaterThanOrEqual(1);
    expect(await pageText(page)).toMatch(/Too many attempts\. Try again in \d+ seconds?\./);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000 + 200));
    const accepted = await browser.follow(await tryCode(await generate({ secret })), strict.issuer);
    expect([200, 303]).toContain(accepted.status); // consent page, or straight back to the client
    expect(await pageText(accepted)).not.toContain('Too many attempts');
  } finally {
    await strict.close();
  }
});

describe('the account page', () => {
  test('lists connected apps and revokes one; signs out everywhere', async () => {
    const email = 'owner@example.com';
    await server.services.accounts.create({ email, password, emailVerified: true, name: 'Owner' });
    const tokens = await tokensFor(email, password, { params: { scope: 'openid offline_access', prompt: 'consent' } });

    const { browser, page } = await accountPage(email, password);
    const html = await page.clone().text();
    expect(html).toContain('Test RP');
    expect(html).not.toContain('account-console');

    const revoke = readForm(html.slice(html.indexOf('/account/apps/revoke') - 200), page.url);
    const after = await browser.follow(await browser.post(revoke.action, revoke.fields), server.issuer);
    expect(await pageText(after)).toContain('no longer has access');
    await expect(oidc.refreshTokenGrant(rp.config, tokens.refresh_token!)).rejects.toMatchObject({ error: 'invalid_grant' });

    const profile = await browser.post(`${server.issuer}/account/profile`, { _csrf: readForm(html, page.url).fields._csrf!, name: 'New Name' });
    expect(profile.status).toBe(303);
    expect((await server.services.accounts.get(email))?.name).toBe('New Name');

    const signOut = html.slice(html.indexOf('/account/sign-out-everywhere') - 200);
    const out = readForm(signOut, page.url);
    expect(await pageText(await browser.post(out.action, out.fields))).toContain('Signed out everywhere');
    const back = await browser.get(`${server.issuer}/account`);
    expect(back.headers.get('location')).toBe('/account/sign-in');

    const audit = await server.services.audit.tail({ actor: (await server.services.accounts.get(email))!.id, limit: 20 });
    expect(audit.map((e) => e.action)).toEqual(expect.arrayContaining(['account.app.revoke', 'account.profile.update', 'account.sign-out-everywhere']));
  });

  test('changing the password needs the current one and signs out everywhere', async () => {
    const email = 'changer@example.com';
    await server.services.accounts.create({ email, password, emailVerified: true });
    const { browser, page } = await accountPage(email, password);
    const csrfToken = readForm(await page.clone().text(), page.url).fields._csrf!;
    const change = (current: string, next: string) => browser.post(`${server.issuer}/account/password`, { _csrf: csrfToken, current, password: next });

    const wrong = await change('not my password', 'saffron meadow pocket nine');
    expect(wrong.status).toBe(400);
    expect(await pageText(wrong)).toContain('current password is not correct');
    const weak = await change(password, 'changer@example.com');
    expect(weak.status).toBe(400);

    const changed = await change(password, 'saffron meadow pocket nine');
    expect(await pageText(changed)).toContain('signed out everywhere');
    expect((await browser.get(`${server.issuer}/account`)).headers.get('location')).toBe('/account/sign-in');
    expect(await server.services.accounts.authenticate(email, 'saffron meadow pocket nine')).toBeDefined();
    await mailTo(email, /password was changed/i);
  });

  test('forms without the CSRF token are refused', async () => {
    const { browser } = await accountPage('owner@example.com', password);
    const forged = await browser.post(`${server.issuer}/account/profile`, { name: 'Mallory' });
    expect(forged.status).toBe(403);
    expect((await server.services.accounts.get('owner@example.com'))?.name).toBe('New Name');
  });
});
