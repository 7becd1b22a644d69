/**
 * `user import` and `user export` (scripts/user.ts, src/accounts/transfer.ts) run as real child
 * processes against the database of a real server, with hashes made by the real libraries
 * (bcryptjs, argon2, node:crypto's PBKDF2 as Django and Keycloak compute it). Imported accounts
 * sign in over HTTP through the hosted login page; their hash is argon2id from then on.
 */
import { jest } from '@jest/globals';
import { spawn } from 'node:child_process';
import { createHash, pbkdf2Sync, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import argon2 from 'argon2';
import bcrypt from 'bcryptjs';
import { generate } from 'otplib';
import { loadConfig } from '../src/config.ts';
import { accountModel, type AccountModel } from '../src/accounts/model.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices } from '../src/services.ts';
import { Browser, readForm } from './support/browser.ts';
import { authorizationRequest, callbackUrl, openLoginPage, registerRelyingParty, submitLogin, type RelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';

jest.setTimeout(240_000);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const COOKIE_KEYS = 'test-cookie-key-0123456789abcdefghijklmnop';

let server: TestServer;
let rp: RelyingParty;
let accounts: AccountModel;
let dir: string;

interface Result { code: number; stdout: string; stderr: string }
type Report = { line: number; status: string; email?: string; id?: string; changes?: string[]; kept?: string[]; reason?: string };

/** Runs `node scripts/user.ts ...args` against `mongoUri`, writing `stdin` to it. */
function user(args: string[], options: { stdin?: string; mongoUri?: string } = {}): Promise<Result> {
  const env = {
    ...process.env, MONGODB_URI: options.mongoUri ?? server.services.config.mongodbUri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error',
    NODE_ENV: 'test', ISSUER: server.issuer, COOKIE_KEYS,
  };
  return new Promise((resolve, reject) => {
    const child = spawn('node', ['scripts/user.ts', '--actor', 'importer', ...args], { cwd: root, env, timeout: 120_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(options.stdin ?? '');
  });
}

const jsonLines = (text: string) => text.trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);

/** Imports `lines` from a file; returns the per-line reports and the summary. */
async function importLines(lines: unknown[], options: { expectCode?: number; mongoUri?: string } = {}) {
  const file = path.join(dir, `${randomBytes(4).toString('hex')}.jsonl`);
  await writeFile(file, lines.map((line) => (typeof line === 'string' ? line : JSON.stringify(line))).join('\n'));
  const result = await user(['import', file], { mongoUri: options.mongoUri });
  expect(result.code).toBe(options.expectCode ?? 0);
  if ((options.expectCode ?? 0) === 0) expect(result.stderr).toBe('');
  const out = jsonLines(result.stdout);
  return { reports: out.slice(0, -1) as Report[], summary: out.at(-1)!.summary as Record<string, number>, result };
}

/** A password sign-in through the hosted login page: 'ok' (back at the app), 'code' (second step asked) or the failing status. */
async function httpSignIn(email: string, password: string): Promise<{ outcome: 'ok' | 'code' | number; browser: Browser; page: Response }> {
  const browser = new Browser();
  const request = await authorizationRequest(rp, { scope: 'openid email' });
  let page = await browser.follow(await submitLogin(browser, server, await openLoginPage(browser, server, request.url), email, password), server.issuer);
  if (page.status === 200 && /value="allow"/.test(await page.clone().text())) {
    const consent = readForm(await page.clone().text(), page.url);
    page = await browser.follow(await browser.post(consent.action, { ...consent.fields, decision: 'allow' }), server.issuer);
  }
  if (page.status === 200 && /name="code"/.test(await page.clone().text())) return { outcome: 'code', browser, page };
  if (page.status === 303 || page.status === 302) {
    expect(callbackUrl(page).searchParams.get('code')).toEqual(expect.any(String));
    return { outcome: 'ok', browser, page };
  }
  return { outcome: page.status, browser, page };
}

const stored = (email: string) => accounts.findOne({ email }).lean();

// --- hashes as the other systems write them -------------------------------------------------

const saltText = () => randomBytes(16).toString('base64url').replace(/[-_]/g, 'x').slice(0, 22);
function django(algorithm: 'pbkdf2_sha256' | 'pbkdf2_sha1', password: string, iterations = 20_000): string {
  const salt = saltText();
  const digest = algorithm === 'pbkdf2_sha256' ? 'sha256' : 'sha1';
  const hash = pbkdf2Sync(password, salt, iterations, digest === 'sha256' ? 32 : 20, digest).toString('base64');
  return `${algorithm}$${iterations}$${salt}$${hash}`;
}
/** Keycloak's credential (credentialData.algorithm/hashIterations, secretData.salt/value): a 512-bit key. */
function keycloak(algorithm: 'pbkdf2-sha256' | 'pbkdf2-sha512' | 'pbkdf2', password: string, iterations = 27_500) {
  const salt = randomBytes(16);
  const digest = { 'pbkdf2-sha256': 'sha256', 'pbkdf2-sha512': 'sha512', pbkdf2: 'sha1' }[algorithm];
  const hash = pbkdf2Sync(password, salt, iterations, 64, digest).toString('base64');
  return { format: 'pbkdf2', algorithm, iterations, salt: salt.toString('base64'), hash };
}

beforeAll(async () => {
  server = await startTestServer();
  rp = await registerRelyingParty(server, { scope: 'openid email' });
  accounts = accountModel(server.services.connection);
  dir = await mkdtemp(path.join(os.tmpdir(), 'user-import-'));
});

afterAll(async () => {
  await server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const passwords: Record<string, string> = {};

test('every hash format signs in over HTTP once imported, and is argon2id from then on; a wrong password still fails', async () => {
  const formats = new Map<string, (secret: string) => Promise<unknown> | unknown>([
    ['bcrypt2b', async (s) => ({ format: 'bcrypt', hash: await bcrypt.hash(s, 10) })],
    ['bcrypt2a', async (s) => ({ format: 'bcrypt', hash: (await bcrypt.hash(s, 10)).replace(/^\$2b\$/, '$2a$') })],
    ['bcrypt2y', async (s) => ({ format: 'bcrypt', hash: (await bcrypt.hash(s, 10)).replace(/^\$2b\$/, '$2y$') })],
    ['djangosha256', (s) => ({ format: 'django', hash: django('pbkdf2_sha256', s) })],
    ['djangosha1', (s) => ({ format: 'django', hash: django('pbkdf2_sha1', s) })],
    ['djangobcrypt', async (s) => ({ format: 'django', hash: `bcrypt_sha256$${await bcrypt.hash(createHash('sha256').update(s).digest('hex'), 10)}` })],
    ['keycloaksha256', (s) => keycloak('pbkdf2-sha256', s)],
    ['keycloaksha512', (s) => keycloak('pbkdf2-sha512', s)],
    ['keycloaksha1', (s) => keycloak('pbkdf2', s)],
    ['argon2i', async (s) => ({ format: 'argon2', hash: await argon2.hash(s, { type: argon2.argon2i, memoryCost: 4096, timeCost: 3, parallelism: 1 }) })],
    ['argon2d', async (s) => ({ format: 'argon2', hash: await argon2.hash(s, { type: argon2.argon2d, memoryCost: 4096, timeCost: 3, parallelism: 1 }) })],
    // Made with this server's own cost: taken over as it is, without hashing again.
    ['argon2id', async (s) => ({ format: 'argon2', hash: await argon2.hash(s, { type: argon2.argon2id, memoryCost: 19456, timeCost: 2, parallelism: 1 }) })],
  ]);
  const lines: Record<string, unknown>[] = [];
  for (const [name, hash] of formats) {
    passwords[name] = `Imported-${name}-Secret-${randomBytes(3).toString('hex')}`;
    lines.push({ email: `${name}@import.example.com`, email_verified: true, name: `User ${name}`, password: await hash(passwords[name]) });
  }
  const { reports, summary } = await importLines(lines);
  expect(summary).toEqual({ lines: formats.size, created: formats.size, updated: 0, unchanged: 0, errors: 0 });
  expect(reports.map((r) => [r.line, r.status])).toEqual(lines.map((_, i) => [i + 1, 'created']));

  for (const line of lines) {
    const email = String(line.email);
    const name = email.split('@')[0]!;
    const before = (await stored(email))!;
    expect([name, before.passwordHash, before.importedPassword?.format]).toEqual([name, undefined, (line.password as { format: string }).format]);

    expect([name, (await httpSignIn(email, `${passwords[name]}x`)).outcome]).toEqual([name, 401]);
    expect((await stored(email))!.importedPassword).toBeDefined(); // a wrong password changes nothing
    expect([name, (await httpSignIn(email, passwords[name]!)).outcome]).toEqual([name, 'ok']);
    const after = (await stored(email))!;
    expect([name, after.passwordHash?.slice(0, 10), after.importedPassword]).toEqual([name, '$argon2id$', undefined]);
    if (name === 'argon2id') expect(after.passwordHash).toBe((line.password as { hash: string }).hash);
    expect([name, (await httpSignIn(email, `${passwords[name]}x`)).outcome]).toEqual([name, 401]);
    expect([name, (await httpSignIn(email, passwords[name]!)).outcome]).toEqual([name, 'ok']);
  }
});

test('roles, flags and a TOTP secret are imported; the second step asks for the imported secret\'s code', async () => {
  const secret = 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP';
  const password = 'Quartz-Meadow-Violin-7731';
  // A document shared with an address before its account is imported (verified) goes to that account.
  const sharer = await server.services.accounts.create({ email: 'sharer@import.example.com', password, emailVerified: true });
  const caller = { kind: 'user' as const, sub: sharer.id, clientId: rp.client.client_id, scopes: new Set(['documents:read', 'documents:write']) };
  const info = { ip: '127.0.0.1', requestId: null };
  const shared = (await server.services.documents.create(caller, { title: 'For the newcomer' }, info)).doc._id;
  await server.services.documents.addShare(caller, shared, 'newcomer@import.example.com', 'viewer', info);

  const { reports } = await importLines([{ email: 'newcomer@import.example.com', email_verified: true }, {
    email: 'Totp@Import.Example.com', email_verified: false, given_name: 'Tess', locale: 'en-gb', roles: ['admin', 'auditor'],
    password: { format: 'bcrypt', hash: await bcrypt.hash(password, 10) }, totp_secret: secret.toLowerCase().replace(/(.{4})/g, '$1 '),
  }]);
  expect(reports).toEqual([
    { line: 1, status: 'created', email: 'newcomer@import.example.com', id: expect.any(String) },
    { line: 2, status: 'created', email: 'totp@import.example.com', id: expect.any(String) },
  ]);
  const [share] = (await server.services.documents.get(caller, shared)).doc.shares;
  expect([share?.userId, share?.pending]).toEqual([reports[0]!.id, false]);
  const account = (await server.services.accounts.get('totp@import.example.com'))!;
  expect(account).toMatchObject({ email_verified: false, given_name: 'Tess', locale: 'en-GB', roles: ['admin', 'auditor'], disabled: false, name: null });
  expect(await server.services.mfa.status(account.id)).toEqual({ enabled: true, recoveryCodesLeft: 0 });
  expect((await stored(account.email))!.mfa!.secret).toBe(secret);

  const { outcome, browser, page } = await httpSignIn(account.email, password);
  expect(outcome).toBe('code');
  const form = readForm(await page.clone().text(), page.url);
  let done = await browser.follow(await browser.post(form.action, { ...form.fields, code: await generate({ secret }) }), server.issuer);
  if (done.status === 200) {
    const consent = readForm(await done.clone().text(), done.url);
    done = await browser.follow(await browser.post(consent.action, { ...consent.fields, decision: 'allow' }), server.issuer);
  }
  expect(callbackUrl(done).searchParams.get('code')).toEqual(expect.any(String));
});

test('a re-run changes nothing; a changed line updates, but never over a password or a TOTP secret the user has since', async () => {
  const hashFor = (password: string) => bcrypt.hash(password, 10);
  const line = async (email: string, password: string, extra: Record<string, unknown> = {}) =>
    ({ email, name: 'Same', roles: ['staff'], password: { format: 'bcrypt', hash: await hashFor(password) }, ...extra });
  const totp = 'KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU';
  const first = [
    await line('signed-in@import.example.com', 'First-Password-River-42'),
    await line('waiting@import.example.com', 'First-Password-River-42'),
    await line('mfa@import.example.com', 'First-Password-River-42', { totp_secret: totp }),
  ];
  expect((await importLines(first)).summary).toMatchObject({ created: 3 });
  const again = await importLines(first);
  expect(again.summary).toEqual({ lines: 3, created: 0, updated: 0, unchanged: 3, errors: 0 });
  expect(again.reports.every((r) => !r.changes && !r.kept)).toBe(true);

  // The first account signs in: its password is its own from now on.
  expect((await httpSignIn('signed-in@import.example.com', 'First-Password-River-42')).outcome).toBe('ok');
  const mfaAccount = (await server.services.accounts.get('mfa@import.example.com'))!;
  await server.services.mfa.reset(mfaAccount.id); // turned off since the import: stays off
  expect((await importLines(first)).reports.map((r) => [r.status, r.kept ?? []])).toEqual([['unchanged', ['password']], ['unchanged', []], ['unchanged', ['totp_secret']]]);

  const changed = [
    await line('signed-in@import.example.com', 'Second-Password-Harbor-97', { name: 'Renamed', roles: [] }),
    await line('waiting@import.example.com', 'Second-Password-Harbor-97', { disabled: true }),
    first[2], // the same line: its TOTP secret is no longer the account's to take
  ];
  const update = await importLines(changed);
  expect(update.reports.map((r) => [r.status, r.changes, r.kept])).toEqual([
    ['updated', ['name', 'roles'], ['password']],
    ['updated', ['disabled', 'password'], undefined],
    ['unchanged', undefined, ['totp_secret']],
  ]);
  expect(await server.services.mfa.status(mfaAccount.id)).toMatchObject({ enabled: false });
  expect(await server.services.accounts.get('signed-in@import.example.com')).toMatchObject({ name: 'Renamed', roles: [] });
  expect((await httpSignIn('signed-in@import.example.com', 'First-Password-River-42')).outcome).toBe('ok');
  expect((await httpSignIn('signed-in@import.example.com', 'Second-Password-Harbor-97')).outcome).toBe(401);
  // The waiting account got the new hash (and is disabled now: the right password is refused too).
  expect((await stored('waiting@import.example.com'))!.disabled).toBe(true);
  await accounts.updateOne({ email: 'waiting@import.example.com' }, { disabled: false });
  expect(await server.services.accounts.authenticate('waiting@import.example.com', 'First-Password-River-42')).toBeUndefined();
  expect(await server.services.accounts.authenticate('waiting@import.example.com', 'Second-Password-Harbor-97')).toEqual(expect.any(String));

  const events = await server.services.audit.tail({ action: 'account.import', limit: 100 });
  expect(events.at(-1)).toMatchObject({
    actor: { sub: 'operator:importer' }, target: null, details: { lines: 3, created: 0, updated: 2, unchanged: 1, errors: 0, finished: true },
  });
});

test('a re-run keeps what users and administrators changed since, and finds an account whose email changed', async () => {
  const line = { email: 'since@import.example.com', email_verified: true, name: 'As Imported', roles: ['editor'], disabled: false };
  expect((await importLines([line])).reports[0]).toMatchObject({ status: 'created' });
  const { accounts } = server.services;
  await accounts.setDisabled(line.email, true);
  await accounts.setRoles(line.email, []);
  await accounts.updateProfile(line.email, { name: 'Changed Since' });
  await server.services.connection.collection('accounts').updateOne({ email: line.email }, { $set: { email: 'renamed@import.example.com' } });

  const again = (await importLines([line])).reports[0]!;
  expect(again).toMatchObject({ status: 'unchanged' });
  expect([...(again.kept ?? [])].sort()).toEqual(['disabled', 'email', 'name', 'roles']);
  const account = await accounts.get('renamed@import.example.com');
  expect(account).toMatchObject({ disabled: true, roles: [], name: 'Changed Since' });
  // No second account at the old address (with the old imported password).
  expect(await accounts.get(line.email)).toBeUndefined();

  // A field the import set and nobody touched since follows the file.
  expect((await importLines([{ ...line, given_name: 'Given' }])).reports[0]).toMatchObject({ status: 'updated', changes: ['given_name'] });
  expect((await accounts.get('renamed@import.example.com'))?.given_name).toBe('Given');
});

test('on an account no import has marked, a line never un-verifies the address or re-enables the account', async () => {
  const { accounts } = server.services;
  const native = await accounts.create({ email: 'native@import.example.com', password: 'quartz lantern meadow 81', emailVerified: true });
  await accounts.setDisabled(native.id, true);
  const report = (await importLines([{ email: native.email, email_verified: false, disabled: false, name: 'Native' }])).reports[0]!;
  expect(report).toMatchObject({ status: 'updated', changes: ['name'] });
  expect([...(report.kept ?? [])].sort()).toEqual(['disabled', 'email_verified']);
  expect(await accounts.get(native.email)).toMatchObject({ email_verified: true, disabled: true, name: 'Native' });
});

test('bad lines are reported (never with their hash) and skipped, the rest imported, and the exit code says so', async () => {
  const good = { email: 'good@import.example.com', password: { format: 'bcrypt', hash: await bcrypt.hash('Good-Password-Lake-12', 10) } };
  const weakBcrypt = await bcrypt.hash('x', 4);
  const lines = [
    '{"email": "broken@import.example.com", "password": {"format": "bcrypt", "hash": "$2b$10$abc"',
    '["an", "array"]',
    { name: 'No Email' },
    { email: 'weak-bcrypt@import.example.com', password: { format: 'bcrypt', hash: weakBcrypt } },
    { email: 'weak-pbkdf2@import.example.com', password: { format: 'django', hash: django('pbkdf2_sha256', 'x', 500) } },
    { email: 'md5@import.example.com', password: { format: 'django', hash: 'md5$salt$5f4dcc3b5aa765d61d8327deb882cf99' } },
    { email: 'bad-argon@import.example.com', password: { format: 'argon2', hash: '$argon2id$v=19$m=65536$c2FsdHNhbHQ$aGFzaA' } },
    { email: 'unknown-format@import.example.com', password: { format: 'sha512', hash: 'abc' } },
    { email: 'typo@import.example.com', emailVerified: true },
    { email: 'short-totp@import.example.com', totp_secret: 'JBSWY3DPEHPK3PXP' },
    '',
    good,
    { ...good, name: 'Twice' },
    { email: 'bad-profile@import.example.com', website: 'http://insecure.example.com' },
    // Names an object has by inheritance are no formats or digests.
    { email: 'proto-format@import.example.com', password: { format: 'constructor', hash: 'x' } },
    { email: 'proto-pbkdf2@import.example.com', password: { format: 'pbkdf2', algorithm: 'constructor', iterations: 27_500, salt: randomBytes(16).toString('base64'), hash: randomBytes(32).toString('base64') } },
    { email: 'proto-django@import.example.com', password: { format: 'django', hash: 'constructor$1000$salt$aGFzaA==' } },
  ];
  const { reports, summary, result } = await importLines(lines, { expectCode: 1 });
  expect(result.stderr).toMatch(/^error: 15 of 16 lines were not imported/);
  expect(summary).toEqual({ lines: 16, created: 1, updated: 0, unchanged: 0, errors: 15 });
  expect(reports.map((r) => [r.line, r.status, r.reason])).toEqual([
    [1, 'error', 'not valid JSON'],
    [2, 'error', 'a line must be a JSON object'],
    [3, 'error', 'email is required'],
    [4, 'error', 'password: bcrypt cost must be 8 to 12, not 4'],
    [5, 'error', 'password: PBKDF2 iterations must be 1000 to 1300000'],
    [6, 'error', expect.stringMatching(/^password: unsupported Django hasher/)],
    [7, 'error', expect.stringMatching(/^password: not an argon2 PHC string/)],
    [8, 'error', 'password format must be argon2, bcrypt, django or pbkdf2'],
    [9, 'error', 'unknown field "emailVerified"'],
    [10, 'error', expect.stringMatching(/^totp_secret must be base32 of at least 128 bits/)],
    [12, 'created', undefined],
    [13, 'error', 'the same account is on line 12'],
    [14, 'error', expect.stringMatching(/^Website must be an absolute https/)],
    [15, 'error', 'password format must be argon2, bcrypt, django or pbkdf2'],
    [16, 'error', 'password: unknown PBKDF2 algorithm'],
    [17, 'error', expect.stringMatching(/^password: unsupported Django hasher/)],
  ]);
  expect(result.stdout).not.toContain(weakBcrypt);
  expect(result.stdout).not.toContain('$2b$10$abc');
  expect(result.stdout).not.toContain('5f4dcc3b');
  expect(await server.services.accounts.get('weak-bcrypt@import.example.com')).toBeUndefined();
  expect((await stored('good@import.example.com'))!.importedPassword).toMatchObject({ format: 'bcrypt' });

  // Standard input works the same, and a missing file is refused before anything runs.
  const piped = await user(['import', '-'], { stdin: `${JSON.stringify({ email: 'piped@import.example.com' })}\n` });
  expect(piped.code).toBe(0);
  expect(jsonLines(piped.stdout)).toEqual([
    { line: 1, status: 'created', email: 'piped@import.example.com', id: expect.any(String) },
    { summary: { lines: 1, created: 1, updated: 0, unchanged: 0, errors: 0 } },
  ]);
  const missing = await user(['import', path.join(dir, 'none.jsonl')]);
  expect([missing.code, missing.stdout, missing.stderr]).toEqual([1, '', expect.stringMatching(/^error: cannot read /)]);
});

test('export writes the same format; into an empty database it gives the same accounts, and with --with-hashes the same passwords', async () => {
  const plain = jsonLines((await user(['export'])).stdout);
  expect(plain.length).toBe(await accounts.countDocuments());
  for (const line of plain) {
    expect(line).not.toHaveProperty('password');
    expect(line).not.toHaveProperty('totp_secret');
  }
  const exported = await user(['export', '--with-hashes']);
  expect([exported.code, exported.stderr]).toEqual([0, '']);
  const lines = jsonLines(exported.stdout);
  const totpLine = lines.find((l) => l.email === 'totp@import.example.com')!;
  expect(totpLine).toMatchObject({ totp_secret: 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP', roles: ['admin', 'auditor'], locale: 'en-GB' });
  // good@ has not signed in since its import: its imported bcrypt hash goes out as it came in.
  expect(lines.find((l) => l.email === 'good@import.example.com')!.password).toMatchObject({ format: 'bcrypt' });
  expect(lines.find((l) => l.email === 'argon2id@import.example.com')!.password).toMatchObject({ format: 'argon2', hash: expect.stringMatching(/^\$argon2id\$/) });

  const emptyUri = testMongoUri('import_roundtrip');
  const other = await openServices(loadConfig({ NODE_ENV: 'test', MONGODB_URI: emptyUri, LOG_LEVEL: 'silent', COOKIE_KEYS }), createLogger('silent'));
  try {
    const file = path.join(dir, 'export.jsonl');
    await writeFile(file, exported.stdout);
    const imported = await user(['import', file], { mongoUri: emptyUri });
    expect(imported.code).toBe(0);
    expect(jsonLines(imported.stdout).at(-1)).toEqual({ summary: { lines: lines.length, created: lines.length, updated: 0, unchanged: 0, errors: 0 } });

    const withoutUpdated = (list: { id: string; updated_at: string }[]) =>
      list.map(({ updated_at: _, ...rest }) => rest).sort((a, b) => a.id.localeCompare(b.id));
    expect(withoutUpdated(await other.accounts.list())).toEqual(withoutUpdated(await server.services.accounts.list()));
    for (const name of ['bcrypt2b', 'keycloaksha512', 'argon2i', 'argon2id']) {
      const email = `${name}@import.example.com`;
      expect([name, await other.accounts.authenticate(email, passwords[name]!)]).toEqual([name, (await other.accounts.get(email))!.id]);
      expect(await other.accounts.authenticate(email, `${passwords[name]}x`)).toBeUndefined();
    }
    expect(await other.accounts.authenticate('good@import.example.com', 'Good-Password-Lake-12')).toEqual(expect.any(String));
    const totpAccount = (await other.accounts.get('totp@import.example.com'))!;
    expect(await other.mfa.verifySignIn(totpAccount.id, await generate({ secret: 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP' }))).toBe('otp');
    // And a second time nothing changes there either.
    const rerun = await user(['import', file], { mongoUri: emptyUri });
    expect(jsonLines(rerun.stdout).at(-1)).toMatchObject({ summary: { unchanged: lines.length } });
  } finally {
    await other.connection.dropDatabase();
    await other.close();
  }
  const events = await server.services.audit.tail({ action: 'account.export', limit: 10 });
  expect(events.map((e) => e.details)).toEqual([{ accounts: plain.length, with_hashes: false }, { accounts: lines.length, with_hashes: true }]);
});
