/**
 * Bodies nobody should send, at every form and endpoint that reads one, against the provider as its
 * own process logging at trace level: malformed JSON and urlencoded, multipart, corrupt gzip,
 * deflate and br, unknown encodings, foreign charsets, oversized and decompression-bomb bodies,
 * and well-formed but wrong forms. Each is answered 4xx in the route's own format (styled page,
 * problem+json, OAuth error), and nothing that was in a body (a real password, a real client
 * secret, a token) reaches the log.
 */
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices, type Services } from '../src/services.ts';
import { Browser, readForm } from './support/browser.ts';
import { authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, signIn, submitLogin, type RelyingParty } from './support/flows.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';
import type { TestServer } from './support/server.ts';
import { startSmtpCapture, type SmtpCapture } from './support/smtp.ts';

const EMAIL = 'leak-probe@example.com';
const PASSWORD = 'Quokka-Lantern-8841-Marble';
const TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwcm9iZSJ9.Tok3nLeakMarker55';
const RELAXED = Object.fromEntries(['SIGNIN_ATTEMPTS_PER_IP', 'SIGNIN_PER_IP', 'SIGNIN_PER_ACCOUNT', 'REGISTER_PER_IP', 'REGISTER_PER_EMAIL',
  'RESET_PER_IP', 'RESET_PER_EMAIL', 'VERIFY_PER_IP', 'VERIFY_PER_EMAIL', 'TOKEN_PER_CLIENT'].map((name) => [`RATE_LIMIT_${name}`, '100000/60']));

let smtp: SmtpCapture;
let child: ServerProcess;
let services: Services;
let server: TestServer;
let rp: RelyingParty;
let secret: string;
const sentIds: string[] = [];

/** Each test's bound: a few hundred requests, no argon2 work for most. */
const TIMEOUT_MS = 90_000;

beforeAll(async () => {
  smtp = await startSmtpCapture();
  const env = { MONGODB_URI: testMongoUri('logs'), REDIS_URL: testRedisUrl(), LOG_LEVEL: 'trace', SMTP_URL: smtp.url, LOCKOUT_THRESHOLD: '100', ...RELAXED };
  child = await startServerProcess({ env });
  // The test's own handle on the same database, to create the account and client the forms use.
  const config = loadConfig({ NODE_ENV: 'test', ISSUER: child.url, COOKIE_KEYS: 'test-cookie-key-0123456789abcdefghijklmnop', ...env, LOG_LEVEL: 'silent' });
  services = await openServices(config, createLogger('silent'));
  server = { issuer: child.url, url: child.url, services, close: () => services.close() };
  await services.accounts.create({ email: EMAIL, password: PASSWORD, name: 'Probe', emailVerified: true });
  rp = await registerRelyingParty(server, { scope: 'openid profile email offline_access documents:read documents:write' });
  secret = rp.client.client_secret!;
}, TIMEOUT_MS);

afterAll(async () => {
  await child?.stop();
  await services?.connection.dropDatabase().catch(() => undefined);
  await services?.close();
  await smtp?.close();
}, TIMEOUT_MS);

interface Sample {
  name: string;
  headers: Record<string, string>;
  body: Buffer;
  /** The status our parser must give, when the route's own rules do not decide it. */
  expected?: number;
}

const FORM = 'application/x-www-form-urlencoded';
const urlencoded = (fields: Record<string, string>) => Buffer.from(new URLSearchParams(fields).toString());

/**
 * Every way a body can be unreadable, each carrying the password, the client secret and a token,
 * as a form (the pages, oidc-provider) or as JSON (the documents API, which reads nothing else).
 */
function malformed(fields: Record<string, string>, { json = false, limit = 8 * 1024 } = {}): Sample[] {
  const secrets = { ...fields, password: PASSWORD, client_secret: secret, token: TOKEN };
  const type = json ? 'application/json' : FORM;
  const encode = (values: Record<string, string>) => (json ? Buffer.from(JSON.stringify(values)) : urlencoded(values));
  const plain = encode(secrets);
  const gzip = gzipSync(plain);
  const boundary = 'ProbeBoundary7';
  const multipart = Object.entries(secrets).map(([name, value]) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`).join('');
  return [
    // Unquoted, so V8's SyntaxError message quotes the text around it.
    { name: 'malformed JSON', headers: { 'content-type': 'application/json' }, body: Buffer.from(`{"_csrf":"${fields._csrf ?? ''}","password": ${PASSWORD}, "client_secret": "${secret}", "token": "${TOKEN}"}`), ...(json ? { expected: 400 } : {}) },
    { name: 'malformed urlencoded', headers: { 'content-type': FORM }, body: Buffer.concat([urlencoded(secrets), Buffer.from('&password[$ne]=1&%E0%A4%A=%ZZ&email[]=x&&=&'), Buffer.from([0xff, 0xfe, 0x00])]), ...(json ? { expected: 415 } : {}) },
    { name: 'multipart', headers: { 'content-type': `multipart/form-data; boundary=${boundary}` }, body: Buffer.from(`${multipart}--${boundary}--\r\n`), expected: 415 },
    { name: 'corrupt gzip', headers: { 'content-type': type, 'content-encoding': 'gzip' }, body: Buffer.concat([gzip.subarray(0, 10), plain]), expected: 400 },
    { name: 'truncated gzip', headers: { 'content-type': type, 'content-encoding': 'gzip' }, body: gzip.subarray(0, gzip.length - 6), expected: 400 },
    { name: 'corrupt deflate', headers: { 'content-type': type, 'content-encoding': 'deflate' }, body: plain, expected: 400 },
    { name: 'corrupt br', headers: { 'content-type': type, 'content-encoding': 'br' }, body: Buffer.concat([brotliCompressSync(plain).subarray(0, 4), plain]), expected: 400 },
    { name: 'unknown Content-Encoding', headers: { 'content-type': type, 'content-encoding': 'x-squash' }, body: plain, expected: 415 },
    { name: 'UTF-16 charset', headers: { 'content-type': `${type}; charset=utf-16le` }, body: Buffer.from(plain.toString(), 'utf16le'), expected: 415 },
    { name: 'too large', headers: { 'content-type': type }, body: encode({ ...secrets, pad: 'x'.repeat(limit + 1024) }), expected: 413 },
    { name: 'decompression bomb', headers: { 'content-type': type, 'content-encoding': 'gzip' }, body: gzipSync(encode({ ...secrets, pad: '0'.repeat(limit * 4) })), expected: 413 },
    { name: 'deflate, readable but wrong fields', headers: { 'content-type': type, 'content-encoding': 'deflate' }, body: deflateSync(plain) },
    { name: 'wrong fields', headers: { 'content-type': type }, body: plain },
  ];
}

let sequence = 0;
/** Sends one request with an X-Request-Id the log must show, so a missing line fails the test. */
async function send(browser: Browser, url: string, sample: Pick<Sample, 'headers' | 'body'>, accept = 'text/html'): Promise<Response> {
  const id = `logs-probe-${(sequence += 1)}`;
  sentIds.push(id);
  return browser.request(url, { method: 'POST', body: sample.body, headers: { ...sample.headers, accept, 'x-request-id': id } });
}

/** Every sample at a hosted page: 4xx, the page (or problem+json for JSON clients), never a 500. */
async function expectPagesRefuse(browser: Browser, url: string, fields: Record<string, string>): Promise<void> {
  for (const sample of malformed(fields)) {
    const response = await send(browser, url, sample);
    const html = await response.text();
    const outcome = { sample: sample.name, status: response.status, type: response.headers.get('content-type') };
    expect(outcome).toEqual({ ...outcome, status: sample.expected ?? expect.any(Number), type: expect.stringMatching(/^text\/html/) });
    expect(outcome.status >= 400 && outcome.status < 500 ? 'client error' : html.slice(0, 300)).toBe('client error');
    expect(html).toMatch(/<h1>[^<]+<\/h1>/);
    expect(html).not.toContain(PASSWORD);
  }
  const asJson = await send(browser, url, malformed(fields).find((s) => s.name === 'corrupt gzip')!, 'application/json');
  expect([asJson.status, asJson.headers.get('content-type')]).toEqual([400, expect.stringMatching(/^application\/problem\+json/)]);
  expect(await asJson.json()).toMatchObject({ status: 400, detail: expect.stringContaining('could not be read') });
}

/** A fresh browser on the first form of `path`, with the form's hidden fields (CSRF token). */
async function formAt(path: string, browser = new Browser()): Promise<{ browser: Browser; fields: Record<string, string>; action: string }> {
  const page = await browser.get(`${child.url}${path}`);
  expect(page.status).toBe(200);
  const form = readForm(await page.text(), page.url || `${child.url}${path}`);
  return { browser, fields: form.fields, action: form.action };
}

test('the sign-in form refuses every unreadable or wrong body with its page', async () => {
  const browser = new Browser();
  const request = await authorizationRequest(rp);
  const login = await openLoginPage(browser, server, request.url);
  expect(login.status).toBe(200);
  const form = readForm(await login.text(), login.url);
  await expectPagesRefuse(browser, form.action, form.fields);
  // The interaction is still usable: the right password signs in.
  const signedIn = await submitLogin(browser, server, await openLoginPage(browser, server, request.url), EMAIL, PASSWORD);
  expect(signedIn.status).toBe(303);
}, TIMEOUT_MS);

test('registration, verification and password reset refuse them with their pages', async () => {
  for (const path of ['/register', '/forgot', '/verify-email/resend']) {
    const { browser, fields, action } = await formAt(path);
    await expectPagesRefuse(browser, action, fields);
  }
  // The reset and verify forms come from mailed links; a bogus token shows the same form action.
  const { browser, fields } = await formAt('/forgot');
  for (const path of ['/reset', '/verify-email']) await expectPagesRefuse(browser, `${child.url}${path}`, { _csrf: fields._csrf!, token: TOKEN });
}, TIMEOUT_MS);

test('the account pages refuse them, signed in, and a wrong current password is a 400', async () => {
  const browser = new Browser();
  const login = await browser.follow(await browser.get(`${child.url}/account`), child.url);
  const page = await browser.follow(await submitLogin(browser, server, login, EMAIL, PASSWORD), child.url);
  expect(new URL(page.url).pathname).toBe('/account');
  const { _csrf } = readForm(await page.text(), page.url).fields;
  for (const path of ['/account/password', '/account/profile', '/account/mfa/disable']) {
    await expectPagesRefuse(browser, `${child.url}${path}`, { _csrf: _csrf!, current: PASSWORD });
  }
  const wrong = await send(browser, `${child.url}/account/password`, { headers: { 'content-type': FORM }, body: urlencoded({ _csrf: _csrf!, current: `${PASSWORD}!`, password: PASSWORD }) });
  expect(wrong.status).toBe(400);
  const weak = await send(browser, `${child.url}/account/password`, { headers: { 'content-type': FORM }, body: urlencoded({ _csrf: _csrf!, current: PASSWORD, password: 'short' }) });
  expect(weak.status).toBe(400);
  expect(await services.accounts.authenticate(EMAIL, PASSWORD)).toBeDefined();
}, TIMEOUT_MS);

test('oidc-provider endpoints answer every body with an OAuth error or page, never a 5xx', async () => {
  const basic = `Basic ${Buffer.from(`${encodeURIComponent(rp.client.client_id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  const browser = new Browser();
  const clientId = rp.client.client_id;
  const cases: [path: string, fields: Record<string, string>, json: boolean][] = [
    ['/token', { grant_type: 'refresh_token', refresh_token: TOKEN, client_id: clientId }, true],
    ['/token/introspection', { token: TOKEN, client_id: clientId }, true],
    ['/token/revocation', { token: TOKEN, client_id: clientId }, true],
    ['/session/end', { id_token_hint: TOKEN, client_id: clientId }, false],
    ['/auth', { client_id: clientId, response_type: 'code', scope: 'openid', redirect_uri: 'http://127.0.0.1:9/callback', code_challenge: TOKEN }, false],
    ['/reg', { client_name: 'probe', client_secret: secret }, false],
  ];
  const wrong: unknown[] = [];
  for (const [path, fields, json] of cases) {
    // oidc-provider reads at most 56 kB itself (and ignores Content-Encoding: the bytes are the form).
    for (const sample of malformed(fields, { limit: 56 * 1024 })) {
      for (const headers of [sample.headers, { ...sample.headers, authorization: basic }]) {
        const response = await send(browser, `${child.url}${path}`, { ...sample, headers }, json ? 'application/json' : 'text/html');
        const text = await response.text();
        const oauthError = (response.headers.get('content-type') ?? '').includes('json') && typeof (JSON.parse(text) as { error?: unknown }).error === 'string';
        const refused = response.status >= 400 && response.status < 500 && (oauthError || (!json && /<h1>[^<]+<\/h1>/.test(text)));
        // oidc-provider ignores Content-Encoding and reads the bytes as the form, so a plain form
        // declared compressed is an ordinary request: introspection and revocation of what is no
        // token give 200 (RFC 7662, 7009), /auth redirects, /session/end shows its logout page.
        const answered = !['/token', '/reg'].includes(path) && [200, 303].includes(response.status) && !text.includes('"active":true');
        const unreadable = ['malformed JSON', 'multipart', 'too large'].includes(sample.name) && path !== '/reg';
        if (!(unreadable ? refused && response.status === 400 : refused || answered) || text.includes(PASSWORD)) {
          wrong.push({ path, sample: sample.name, auth: Boolean(headers.authorization), status: response.status, text: text.slice(0, 200) });
        }
      }
    }
  }
  expect(wrong).toEqual([]);
}, TIMEOUT_MS);

test('the documents API answers every unreadable body with problem+json', async () => {
  const request = await authorizationRequest(rp, { scope: 'openid documents:read documents:write' });
  const tokens = await exchangeCode(rp, request, callbackUrl(await signIn(new Browser(), server, request.url, EMAIL, PASSWORD)));
  const browser = new Browser({ authorization: `Bearer ${tokens.access_token}` });
  const samples = malformed({ title: 'probe', content: PASSWORD }, { json: true, limit: 2 * 1024 * 1024 });
  for (const sample of samples) {
    const response = await send(browser, `${child.url}/api/v1/documents`, sample, 'application/json');
    const body = await response.text();
    const outcome = { sample: sample.name, status: response.status, type: response.headers.get('content-type') };
    expect(outcome).toEqual({ ...outcome, status: sample.expected ?? 400, type: expect.stringMatching(/^application\/problem\+json/) });
    expect(outcome.status >= 400 && outcome.status < 500 ? 'client error' : body).toBe('client error');
  }
  // Still working: a readable body creates the document.
  const created = await send(browser, `${child.url}/api/v1/documents`, { headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: gzipSync(JSON.stringify({ title: 'fine' })) }, 'application/json');
  expect(created.status).toBe(201);
}, TIMEOUT_MS);

test('the log holds none of the secrets, no error-level line, and a line for every request', async () => {
  // Log lines arrive on the child's stdout a moment after the answers.
  const deadline = Date.now() + 10_000;
  const logged = () => new Set(child.output.flatMap((line) => /"requestId":"(logs-probe-\d+)"/.exec(line)?.[1] ?? []));
  while (sentIds.some((id) => !logged().has(id)) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));

  const output = child.output.join('\n');
  for (const [what, value] of [['password', PASSWORD], ['client secret', secret], ['token', TOKEN], ['token signature', 'Tok3nLeakMarker55']] as const) {
    expect({ what, leaked: output.includes(value) }).toEqual({ what, leaked: false });
  }
  expect(child.output.filter((line) => /"level":(50|60)/.test(line))).toEqual([]);
  // The search above covered these requests: each has its line (LOG_LEVEL trace logs the most).
  expect(sentIds.filter((id) => !logged().has(id))).toEqual([]);
  // Every test before this one sent all its requests (one that failed part way sends fewer).
  expect(sentIds.length).toBeGreaterThan(250);
  // The refusals were logged as refusals (info), with their codes.
  expect(output).toMatch(/"code":"body_unreadable"/);
  expect(output).toMatch(/"code":"body_unsupported"/);
  expect(output).toMatch(/"code":"body_too_large"/);
}, TIMEOUT_MS);

test('the logger keeps what says what went wrong and nothing a request brought', async () => {
  const lines: string[] = [];
  const logger = createLogger('trace', { write: (line: string) => { lines.push(line); } });
  // What co-body throws on a bad JSON form: V8 quotes the input, co-body adds it as err.body.
  let parseError: Error & { status?: number; body?: string } = new Error('unset');
  try {
    JSON.parse(`{"password": ${PASSWORD}}`);
  } catch (error) {
    parseError = Object.assign(error as Error, { status: 400, body: `{"password": ${PASSWORD}}` });
  }
  const wrapped = Object.assign(new Error('request failed', { cause: parseError }), {
    code: 'E_PROBE', request: { headers: { Authorization: `Bearer ${TOKEN}`, cookie: `sid=${TOKEN}` } }, response: { body: secret },
  });
  logger.error({ err: wrapped, path: '/token' }, 'request failed');
  logger.error(parseError);
  logger.warn({
    audit: { actor: { sub: 'a' }, form: { password: PASSWORD, code: TOKEN } },
    headers: { 'Set-Cookie': [`session=${TOKEN}`], authorization: `Basic ${secret}` },
    deep: { a: { b: { c: { d: { client_secret: secret, failure: parseError } } } } },
    request: { toJSON: () => ({ url: `/callback?code=${TOKEN}`, header: { cookie: TOKEN } }) },
    code: 'csrf_failed',
  }, 'refused');
  const output = lines.join('');
  for (const value of [PASSWORD, secret, TOKEN]) expect(output).not.toContain(value);

  const [first, second, third] = lines.map((line) => JSON.parse(line) as Record<string, any>);
  expect(first!.err).toEqual({
    type: 'Error', message: 'request failed', stack: expect.stringContaining('request failed'), code: 'E_PROBE',
    cause: { type: 'SyntaxError', message: expect.stringContaining('is not valid JSON'), stack: expect.any(String), status: 400 },
  });
  expect(second!.msg).toMatch(/^Unexpected token .* is not valid JSON \(input not logged\)$/);
  expect(third).toMatchObject({
    code: 'csrf_failed', audit: { actor: { sub: 'a' }, form: { password: '[redacted]', code: '[redacted]' } },
    headers: { 'Set-Cookie': '[redacted]', authorization: '[redacted]' }, request: { url: '/callback?[redacted]', header: { cookie: '[redacted]' } },
  });
});
