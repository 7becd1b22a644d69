/**
 * Accounts against what issue 8 asks of them, end to end through the real pages, the real CLI (a
 * child process), a real SMTP server, Redis and openid-client: the OIDC Core 5.1 profile claims
 * (set on /account and with `user update`, served by userinfo), the zxcvbn-ts password policy on
 * the pages and in the CLI, self-service budgets that typos do not spend, and the way back to the
 * application after a mailed link.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as oidc from 'openid-client';
import { Browser, readForm } from './support/browser.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, submitLogin, type RelyingParty,
} from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { testRedisUrl } from './support/env.ts';
import { linkFrom, startSmtpCapture, type SmtpCapture } from './support/smtp.ts';

// The CLI tests start fresh processes that open every service (several seconds each).
jest.setTimeout(120_000);

const password = 'ember quarry falcon velvet';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// Random per run: the suites share one Redis, which keys the budgets by address.
const newIp = () => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`;
const newEmail = (tag: string) => `${tag}-${randomBytes(4).toString('hex')}@example.com`;

let server: TestServer;
let smtp: SmtpCapture;
let rp: RelyingParty;

beforeAll(async () => {
  smtp = await startSmtpCapture();
  server = await startTestServer({
    SMTP_URL: smtp.url,
    // Each test comes from addresses of its own (X-Forwarded-For), so budgets do not mix.
    TRUST_PROXY: 'true',
    RATE_LIMIT_REGISTER_PER_IP: '3/3600',
    RATE_LIMIT_RESET_PER_IP: '3/3600',
    RATE_LIMIT_VERIFY_PER_IP: '3/3600',
  });
  rp = await registerRelyingParty(server);
});

afterAll(async () => {
  await server?.close();
  await smtp?.close();
});

const mailTo = (address: string, subject: RegExp) =>
  smtp.waitFor((mail) => mail.to.includes(address) && subject.test(mail.subject));

/** The page's text, without the per-response CSP nonce, whitespace collapsed. */
const pageText = async (response: Response) => (await response.clone().text()).replace(/nonce="[^"]*"/g, '').replace(/\s+/g, ' ');

/** Posts the first form on `page` with `fields` added to its hidden ones, following redirects. */
async function submit(browser: Browser, page: Response, fields: Record<string, string>): Promise<Response> {
  const form = readForm(await page.clone().text(), page.url);
  return browser.follow(await browser.post(form.action, { ...form.fields, ...fields }), server.issuer);
}

/** Signs in to /account in a fresh browser. */
async function accountPage(email: string, secret: string): Promise<{ browser: Browser; page: Response }> {
  const browser = new Browser({ 'x-forwarded-for': newIp() });
  const login = await browser.follow(await browser.get(`${server.issuer}/account`), server.issuer);
  const page = await browser.follow(await submitLogin(browser, server, login, email, secret), server.issuer);
  expect(new URL(page.url).pathname).toBe('/account');
  return { browser, page };
}

/** What a relying party asking for `openid profile` reads from userinfo. */
async function userinfo(email: string, secret: string): Promise<oidc.UserInfoResponse> {
  const request = await authorizationRequest(rp, { scope: 'openid profile' });
  const browser = new Browser({ 'x-forwarded-for': newIp() });
  let page = await browser.follow(await submitLogin(browser, server, await openLoginPage(browser, server, request.url), email, secret), server.issuer);
  if (page.status === 200) page = await submit(browser, page, { decision: 'allow' });
  const tokens = await exchangeCode(rp, request, callbackUrl(page));
  return oidc.fetchUserInfo(rp.config, tokens.access_token, tokens.claims()!.sub);
}

interface Result { code: number; stdout: string; stderr: string }

/** `npm run -s user -- ...` as a child process on the server's database. */
async function user(...args: string[]): Promise<Result> {
  // The server's ISSUER too: opening the services registers the account console's redirect URI.
  const env = {
    ...process.env, MONGODB_URI: server.services.config.mongodbUri, REDIS_URL: testRedisUrl(), ISSUER: server.issuer,
    LOG_LEVEL: 'error', NODE_ENV: 'test',
  };
  try {
    const { stdout, stderr } = await promisify(execFile)('node', ['scripts/user.ts', ...args], { cwd: root, env, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw error;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('profile claims (OIDC Core 5.1)', () => {
  const email = 'profile@example.com';

  beforeAll(async () => {
    await server.services.accounts.create({ email, password, emailVerified: true, name: 'Ada Lovelace' });
  });

  test('set on the account page, they are what userinfo serves for scope profile', async () => {
    const { browser, page } = await accountPage(email, password);
    const html = await page.clone().text();
    for (const [field, autocomplete] of [['given_name', 'given-name'], ['family_name', 'family-name'], ['nickname', 'nickname'], ['picture', 'photo']]) {
      expect(html).toMatch(new RegExp(`<label for="profile-[a-z-]+">[^<]+</label>\\s*<input[^>]*name="${field}"[^>]*autocomplete="${autocomplete}"`));
    }
    const saved = await browser.post(`${server.issuer}/account/profile`, {
      ...readForm(html, page.url).fields,
      name: '  Ada King  ', given_name: 'Ada', family_name: 'King', preferred_username: 'ada', nickname: 'Countess',
      picture: 'https://images.example.com/ada.png', website: 'https://ada.example.org/', locale: 'en-gb', zoneinfo: 'europe/london',
    });
    expect(saved.status).toBe(303);
    const after = await browser.follow(saved, server.issuer);
    expect(await pageText(after)).toContain('Your profile is saved.');
    expect(await after.clone().text()).toContain('value="Countess"');

    const claims = await userinfo(email, password);
    expect(claims).toMatchObject({
      name: 'Ada King', given_name: 'Ada', family_name: 'King', preferred_username: 'ada', nickname: 'Countess',
      picture: 'https://images.example.com/ada.png', website: 'https://ada.example.org/',
      locale: 'en-GB', zoneinfo: 'Europe/London', updated_at: expect.any(Number),
    });
    // Clearing a field removes the claim; the rest stay.
    await browser.post(`${server.issuer}/account/profile`, { ...readForm(html, page.url).fields, nickname: '', website: '' });
    const cleared = await userinfo(email, password);
    expect(cleared).not.toHaveProperty('nickname');
    expect(cleared).not.toHaveProperty('website');
    expect(cleared).toMatchObject({ given_name: 'Ada', locale: 'en-GB' });
    const audit = await server.services.audit.tail({ actor: (await server.services.accounts.get(email))!.id, limit: 10 });
    expect(audit.filter((e) => e.action === 'account.profile.update')).toHaveLength(2);
  });

  test('an invalid locale, time zone or an http picture is refused on the page, and nothing changes', async () => {
    const { browser, page } = await accountPage(email, password);
    const before = await server.services.accounts.get(email);
    const refused = await browser.post(`${server.issuer}/account/profile`, {
      ...readForm(await page.clone().text(), page.url).fields,
      given_name: 'Changed', locale: 'english please', zoneinfo: 'Mars/Olympus', picture: 'http://images.example.com/ada.png',
    });
    expect(refused.status).toBe(400);
    const text = await pageText(refused);
    expect(text).toContain('Language must be a BCP 47 language tag');
    expect(text).toContain('Time zone must be an IANA time zone');
    expect(text).toContain('Picture URL must be an absolute https:// address.');
    expect(text).toContain('value="Mars/Olympus"'); // what was typed stays in the form
    expect(await server.services.accounts.get(email)).toEqual(before);
  });

  test('user update sets and clears them from the CLI; bad values fail with a message', async () => {
    const result = await user('update', email, '--given-name', 'Augusta', '--locale', 'fr-ca', '--zoneinfo', 'UTC', '--preferred-username', '');
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
    expect(JSON.parse(result.stdout)).toMatchObject({ email, given_name: 'Augusta', locale: 'fr-CA', zoneinfo: 'UTC', preferred_username: null });
    const claims = await userinfo(email, password);
    expect(claims).toMatchObject({ given_name: 'Augusta', family_name: 'King', locale: 'fr-CA', zoneinfo: 'UTC' });
    expect(claims).not.toHaveProperty('preferred_username');

    const bad = await user('update', email, '--website', 'http://ada.example.org', '--zoneinfo', 'Nowhere/Else');
    expect(bad.code).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toMatch(/^error: Website must be an absolute https:\/\/ address\. Time zone must be an IANA time zone/);
    expect((await user('update', email)).code).toBe(64);
  });
});

describe('password policy', () => {
  test.each([
    ['password1234', 'commonly used password'],
    ['aaaaaaaaaaaa', 'Repeated characters'],
    ['123456789012', 'commonly used password'],
  ])('/register refuses %s (12 characters) with the estimator\'s feedback', async (weak, feedback) => {
    const email = newEmail('weak');
    const browser = new Browser({ 'x-forwarded-for': newIp() });
    const refused = await submit(browser, await browser.get(`${server.issuer}/register`), { email, name: 'Weak', password: weak });
    expect(refused.status).toBe(400);
    const text = await pageText(refused);
    expect(text).toContain('This password is too easy to guess.');
    expect(text).toContain(feedback);
    expect(text).not.toContain('Check your inbox');
  });

  test('user create and set-password apply it; --allow-weak-password skips it, keeps the floor, and is audited', async () => {
    const email = newEmail('cli');
    const weak = await user('create', '--email', email, '--password', 'password1234');
    expect(weak.code).toBe(1);
    expect(weak.stderr).toMatch(/too easy to guess/);
    expect(await server.services.accounts.get(email)).toBeUndefined();

    const allowed = await user('create', '--email', email, '--password', 'password1234', '--allow-weak-password');
    expect({ code: allowed.code, stderr: allowed.stderr }).toEqual({ code: 0, stderr: '' });
    const account = JSON.parse(allowed.stdout) as { id: string };
    expect(await server.services.accounts.authenticate(email, 'password1234')).toBe(account.id);

    expect((await user('set-password', email, '--password', 'aaaaaaaaaaaa')).code).toBe(1);
    expect((await user('set-password', email, '--password', 'short', '--allow-weak-password')).stderr).toMatch(/8 to 128 characters/);
    expect((await user('set-password', email, '--password', 'aaaaaaaaaaaa', '--allow-weak-password')).code).toBe(0);
    expect(await server.services.accounts.authenticate(email, 'aaaaaaaaaaaa')).toBe(account.id);

    const events = (await server.services.audit.tail({ limit: 50, action: 'account.password.weak-allowed.' })).filter((e) => e.target === account.id);
    expect(events.map((e) => e.action)).toEqual(['account.password.weak-allowed.create', 'account.password.weak-allowed.set-password']);
    // Each change is on record too, under the operator who ran the CLI.
    const changes = (await server.services.audit.tail({ limit: 50, action: 'account.' })).filter((e) => e.target === account.id);
    expect(changes.map((e) => e.action)).toEqual([
      'account.create', 'account.password.weak-allowed.create', 'account.password.set', 'account.password.weak-allowed.set-password',
    ]);
    expect(changes.every((e) => e.actor.sub?.startsWith('operator:'))).toBe(true);
  });
});

describe('self-service budgets', () => {
  test('20 registrations with mistakes from one address leave its budget whole; real ones spend it', async () => {
    const browser = new Browser({ 'x-forwarded-for': newIp() });
    const register = async (fields: Record<string, string>) => submit(browser, await browser.get(`${server.issuer}/register`), fields);
    const mistakes: Record<string, string>[] = [
      { email: 'grace@@example.com', name: 'Grace', password },
      { email: 'grace@example', name: 'Grace', password },
      { email: 'grace@example.com', name: '', password },
      { email: 'grace@example.com', name: 'Grace', password: 'password1234' },
      { email: 'grace@example.com', name: 'Grace', password: 'short' },
    ];
    for (let i = 0; i < 20; i += 1) {
      const refused = await register(mistakes[i % mistakes.length]!);
      expect([i, refused.status]).toEqual([i, 400]);
    }
    // A mismatched form (a field that is not on it) is refused as unreadable, and spends nothing either.
    expect((await register({ email: 'grace@example.com', name: 'Grace', password, admin: 'yes' })).status).toBe(400);

    for (let i = 0; i < 3; i += 1) {
      const accepted = await register({ email: newEmail('budget'), name: 'Grace', password });
      expect([i, accepted.status, await pageText(accepted)]).toEqual([i, 200, expect.stringContaining('Check your inbox')]);
    }
    const over = await register({ email: newEmail('budget'), name: 'Grace', password });
    expect(over.status).toBe(429);
    expect(await pageText(over)).toMatch(/Too many requests\. Try again in/);
  });

  test('reset and resend requests with a typo do not spend the budget either', async () => {
    for (const page of ['/forgot', '/verify-email/resend']) {
      const browser = new Browser({ 'x-forwarded-for': newIp() });
      const request = async (email: string) => submit(browser, await browser.get(`${server.issuer}${page}`), { email });
      for (let i = 0; i < 20; i += 1) {
        const typo = await request(i % 2 ? 'grace@example' : 'grace.example.com');
        expect([page, i, typo.status]).toEqual([page, i, 400]);
        expect(await pageText(typo)).toContain('Enter a valid email address.');
      }
      // Known or unknown, a well-formed address is the same answer and spends the budget.
      for (let i = 0; i < 3; i += 1) expect([page, i, (await request(newEmail('nobody'))).status]).toEqual([page, i, 200]);
      expect([page, (await request(newEmail('nobody'))).status]).toEqual([page, 429]);
    }
  });
});

describe('no dead ends', () => {
  /** A relying party's sign-in, left at the login page: its browser, uid and page. */
  async function pendingSignIn() {
    const request = await authorizationRequest(rp, { scope: 'openid profile' });
    const browser = new Browser({ 'x-forwarded-for': newIp() });
    const login = await openLoginPage(browser, server, request.url);
    const uid = /\/interaction\/([\w-]+)\//.exec(await login.clone().text())![1]!;
    return { request, browser, login, uid };
  }

  test('after a reset, the page continues to the application that sent the user', async () => {
    const email = newEmail('lost');
    await server.services.accounts.create({ email, password, emailVerified: true });
    const { request, browser, login, uid } = await pendingSignIn();
    const html = await login.clone().text();
    expect(html).toContain(`href="/forgot?interaction=${uid}"`);
    expect(html).toContain(`href="/register?interaction=${uid}"`);

    const forgot = await browser.get(`${server.issuer}/forgot?interaction=${uid}`);
    expect(readForm(await forgot.clone().text(), forgot.url).fields.interaction).toBe(uid);
    await submit(browser, forgot, { email });
    const link = linkFrom((await mailTo(email, /reset your password/i)).text, '/reset');
    const newPassword = 'granite orchid meteor sleeve';
    const done = await submit(browser, await browser.get(link), { password: newPassword });
    expect(await pageText(done)).toContain('Password changed');
    const doneHtml = await done.clone().text();
    expect(doneHtml).toContain(`<a href="/interaction/${uid}">Continue to Test RP</a>`);
    expect(doneHtml).toContain('<a href="/account">Go to your account</a>');

    // The link resumes the pending authorization: sign in, consent, back to the client with a code.
    const resumed = await browser.follow(await browser.get(`${server.issuer}/interaction/${uid}`), server.issuer);
    expect(resumed.status).toBe(200);
    let page = await browser.follow(await submitLogin(browser, server, resumed, email, newPassword), server.issuer);
    if (page.status === 200) page = await submit(browser, page, { decision: 'allow' });
    const tokens = await exchangeCode(rp, request, callbackUrl(page));
    expect(tokens.access_token).toBeDefined();

    // The notice's sign-in link leads to a working sign-in page.
    const notice = await mailTo(email, /password was changed/i);
    const reader = new Browser();
    const signIn = await reader.follow(await reader.get(linkFrom(notice.text, '/account')), server.issuer);
    expect(signIn.status).toBe(200);
    expect(await signIn.clone().text()).toMatch(/name="password"/);
  });

  test('after registering, the verified page continues to the application; a taken address\'s mail signs in', async () => {
    const email = newEmail('newcomer');
    const { browser, uid } = await pendingSignIn();
    const form = await browser.get(`${server.issuer}/register?interaction=${uid}`);
    expect(readForm(await form.clone().text(), form.url).fields.interaction).toBe(uid);
    await submit(browser, form, { email, name: 'Newcomer', password });
    const link = linkFrom((await mailTo(email, /confirm your email/i)).text, '/verify-email');
    const verified = await submit(browser, await browser.get(link), {});
    expect(await pageText(verified)).toContain('Email verified');
    expect(await verified.clone().text()).toContain(`<a href="/interaction/${uid}">Continue to Test RP</a>`);
    const resumed = await browser.follow(await browser.get(`${server.issuer}/interaction/${uid}`), server.issuer);
    expect(await resumed.clone().text()).toMatch(new RegExp(`action="/interaction/${uid}/login"`));

    // Registering the now-taken address again mails its owner a sign-in link that works.
    const again = new Browser({ 'x-forwarded-for': newIp() });
    await submit(again, await again.get(`${server.issuer}/register`), { email, name: 'Someone', password });
    const exists = await mailTo(email, /already have an account/i);
    const owner = new Browser();
    const signIn = await owner.follow(await owner.get(linkFrom(exists.text, '/account')), server.issuer);
    expect(signIn.status).toBe(200);
    expect(await signIn.clone().text()).toMatch(/name="password"/);
  });

  test('an interaction that is not a uid is refused, and a link without one still offers the account page', async () => {
    const browser = new Browser({ 'x-forwarded-for': newIp() });
    const form = await browser.get(`${server.issuer}/forgot?interaction=${encodeURIComponent('../../evil')}`);
    expect(readForm(await form.clone().text(), form.url).fields).not.toHaveProperty('interaction');
    expect((await submit(browser, form, { email: newEmail('x'), interaction: '"><script>' })).status).toBe(400);

    const email = newEmail('plain');
    await server.services.accounts.create({ email, password, emailVerified: true });
    await submit(browser, await browser.get(`${server.issuer}/forgot`), { email });
    const link = linkFrom((await mailTo(email, /reset your password/i)).text, '/reset');
    const done = await submit(browser, await browser.get(link), { password: 'granite orchid meteor sleeve' });
    const html = await done.clone().text();
    expect(html).not.toContain('/interaction/');
    expect(html).toContain('<a href="/account">Go to your account</a>');
  });
});
