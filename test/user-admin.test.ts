/**
 * The user administration commands of scripts/user.ts (show, update --email, reset-mfa, sessions,
 * revoke-session, delete) run as real child processes against the database of a real server, and
 * checked through what the server and its relying party see: the RP's prompt=none, mail sent over
 * SMTP, introspection, the documents and their GridFS files, and the audit trail.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as oidc from 'openid-client';
import { generate } from 'otplib';
import { accountModel } from '../src/accounts/model.ts';
import type { Caller } from '../src/documents/token.ts';
import { Browser, readForm } from './support/browser.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, signIn, submitLogin, type RelyingParty,
} from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { linkFrom, startSmtpCapture, type SmtpCapture } from './support/smtp.ts';
import { testRedisUrl } from './support/env.ts';

const run = promisify(execFile);
jest.setTimeout(240_000);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const COOKIE_KEYS = 'test-cookie-key-0123456789abcdefghijklmnop';
const password = 'Granite-Willow-Orbit-4412';
const info = { ip: '127.0.0.1', requestId: null };

let smtp: SmtpCapture;
let server: TestServer;
let rp: RelyingParty;

interface Result { code: number; stdout: string; stderr: string }

async function user(...args: string[]): Promise<Result> {
  const env = {
    ...process.env, MONGODB_URI: server.services.config.mongodbUri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error', NODE_ENV: 'test',
    ISSUER: server.issuer, COOKIE_KEYS,
  };
  try {
    const { stdout, stderr } = await run('node', ['scripts/user.ts', '--actor', 'admin-tester', ...args], { cwd: root, env, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw error;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

async function ok<T = Record<string, unknown>>(...args: string[]): Promise<T> {
  const result = await user(...args);
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as T;
}

async function fails(code: number, ...args: string[]): Promise<Result> {
  const result = await user(...args);
  expect([result.code, result.stdout]).toEqual([code, '']);
  return result;
}

let count = 0;
async function newAccount(name: string) {
  count += 1;
  return server.services.accounts.create({ email: `${name}-${count}@admin.example.com`, password, name, emailVerified: true });
}

/** Signs in through the hosted pages in `browser`; returns the authorization request and its callback. */
async function signInWith(browser: Browser, email: string, scope = 'openid email') {
  const request = await authorizationRequest(rp, { scope });
  return { request, callback: callbackUrl(await signIn(browser, server, request.url, email, password)) };
}

/** The RP's prompt=none in this browser: the code, or the error it came back with. */
async function promptNone(browser: Browser): Promise<string> {
  const request = await authorizationRequest(rp, { scope: 'openid email', prompt: 'none' });
  const back = callbackUrl(await browser.follow(await browser.get(request.url), server.issuer));
  return back.searchParams.get('error') ?? (back.searchParams.get('code') ? 'code' : 'nothing');
}

async function enrolMfa(id: string, email: string): Promise<string> {
  const { secret } = await server.services.mfa.beginEnrolment(id, email);
  await server.services.mfa.confirmEnrolment(id, await generate({ secret }));
  return secret;
}

const callerOf = (sub: string): Caller => ({ kind: 'user', sub, clientId: rp.client.client_id, scopes: new Set(['documents:read', 'documents:write']) });
const upload = (body: string) => ({ body: Readable.from([Buffer.from(body)]), contentType: 'text/plain', filename: 'notes.txt' });
const filesOf = (documentId: string) => server.services.connection.collection('document_files.files').countDocuments({ 'metadata.documentId': documentId });
const rawDocument = (id: string) => server.services.connection.collection('documents').findOne({ _id: id as never });
const events = async (action: string) => (await server.services.audit.tail({ action, limit: 100 }));

beforeAll(async () => {
  smtp = await startSmtpCapture();
  server = await startTestServer({ SMTP_URL: smtp.url, MAIL_RETRY_BASE_SECONDS: '1' });
  rp = await registerRelyingParty(server, { scope: 'openid email offline_access' });
});

afterAll(async () => {
  await server?.close();
  await smtp?.close();
});

test('show: the account, its password and MFA state, sessions and grants, and never a secret', async () => {
  const account = await newAccount('shown');
  const browser = new Browser();
  await signInWith(browser, account.email);
  const secret = await enrolMfa(account.id, account.email);

  const result = await user('show', account.email);
  expect(result.code).toBe(0);
  const shown = JSON.parse(result.stdout) as Record<string, unknown>;
  const [session] = await server.services.store.sessionsOf(account.id);
  const [grant] = await server.services.store.grantsOf(account.id);
  expect(shown).toMatchObject({
    id: account.id, email: account.email, password: { set: true }, mfa: { enabled: true, recovery_codes_left: 10 },
    sessions: [{ uid: session!.payload.uid, amr: ['pwd'], apps: [rp.client.client_id], created: expect.any(String), expires: expect.any(String) }],
    grants: [{ id: grant!.id, client_id: rp.client.client_id, client_name: 'Test RP', scope: expect.stringContaining('email') }],
  });
  // The session id is its cookie's value: a bearer credential, so only the uid is shown.
  for (const leak of [secret, session!.id, '$argon2', 'passwordHash', 'recoveryCodeHashes']) expect(result.stdout).not.toContain(leak);
  await fails(3, 'show', 'nobody@admin.example.com');
});

test('sessions and revoke-session: the revoked session is gone, and the app\'s next prompt=none fails there only', async () => {
  const account = await newAccount('sessions');
  const [first, second] = [new Browser(), new Browser()];
  await signInWith(first, account.email);
  const [firstUid] = (await ok<{ uid: string }[]>('sessions', account.email)).map((s) => s.uid);
  await signInWith(second, account.email);
  const listed = await ok<{ uid: string; apps: string[] }[]>('sessions', account.id);
  expect(listed).toHaveLength(2);
  expect(listed.map((s) => s.uid)).toContain(firstUid);
  expect(await promptNone(first)).toBe('code');

  expect(await ok('revoke-session', account.email, firstUid!)).toEqual({ id: account.id, session: firstUid, ended: true });
  expect(await promptNone(first)).toBe('login_required');
  expect(await promptNone(second)).toBe('code');
  expect((await server.services.store.sessionsOf(account.id)).map((s) => s.payload.uid)).not.toContain(firstUid);
  await fails(3, 'revoke-session', account.email, firstUid!);
  expect((await events('account.session.revoke')).at(-1)).toMatchObject({
    actor: { sub: 'operator:admin-tester' }, target: account.id, details: { session: firstUid },
  });
});

test('update --email: the new address is unverified until the mailed link is followed; a taken one is refused and nothing changes', async () => {
  const account = await newAccount('mover');
  const taken = await newAccount('taken');
  const oldReset = await server.services.accountTokens.issue('reset-password', { accountId: account.id, email: account.email }, 3600);

  const refused = await fails(1, 'update', account.email, '--name', 'Should Not Stick', '--email', taken.email.toUpperCase());
  expect(refused.stderr).toMatch(/^error: an account with this email already exists/);
  expect(await server.services.accounts.get(account.id)).toMatchObject({ email: account.email, name: 'mover', email_verified: true });

  const newEmail = `moved-${count}@admin.example.com`;
  const updated = await ok('update', account.email, '--name', 'Moved Person', '--email', newEmail);
  expect(updated).toMatchObject({ id: account.id, email: newEmail, email_verified: false, name: 'Moved Person' });
  expect(await server.services.accountTokens.peek('reset-password', oldReset)).toBeUndefined();

  const mail = await smtp.waitFor((m) => m.to.includes(newEmail) && /confirm your email/i.test(m.subject), 20_000);
  const browser = new Browser();
  const page = await browser.get(linkFrom(mail.text, '/verify-email'));
  const form = readForm(await page.text(), page.url);
  expect((await browser.post(form.action, form.fields)).status).toBe(200);
  expect(await server.services.accounts.get(account.id)).toMatchObject({ email: newEmail, email_verified: true });
  expect((await events('account.update')).at(-1)).toMatchObject({
    actor: { sub: 'operator:admin-tester' }, target: account.id, details: { fields: 'name email', verification_sent: true },
  });
});

test('reset-mfa: two-step verification off, its secret and codes gone, and a sign-in waiting for its code ended', async () => {
  const account = await newAccount('lostphone');
  await enrolMfa(account.id, account.email);
  // A sign-in that has given the password and waits for the code.
  const browser = new Browser();
  const request = await authorizationRequest(rp, { scope: 'openid email' });
  const codePage = await browser.follow(await submitLogin(browser, server, await openLoginPage(browser, server, request.url), account.email, password), server.issuer);
  expect(await codePage.clone().text()).toMatch(/name="code"/);
  const challenges = server.services.connection.collection('mfa_challenges');
  expect(await challenges.countDocuments({ accountId: account.id })).toBe(1);

  expect(await ok('reset-mfa', account.email)).toEqual({ id: account.id, mfa: { enabled: false }, was_enabled: true });
  expect(await server.services.mfa.status(account.id)).toEqual({ enabled: false, recoveryCodesLeft: 0 });
  const record = await accountModel(server.services.connection).findById(account.id).lean();
  expect([record?.mfa, record?.mfaPending]).toEqual([undefined, undefined]);
  expect(await challenges.countDocuments({ accountId: account.id })).toBe(0);
  await smtp.waitFor((m) => m.to.includes(account.email) && /two-step/i.test(m.subject), 20_000);
  // The next sign-in needs the password only.
  expect(callbackUrl(await signIn(new Browser(), server, (await authorizationRequest(rp, { scope: 'openid email' })).url, account.email, password))
    .searchParams.get('code')).toEqual(expect.any(String));
  expect(await ok('reset-mfa', account.id)).toMatchObject({ was_enabled: false });
  expect((await events('account.mfa.reset')).map((e) => e.details)).toEqual([{ was_enabled: true }, { was_enabled: false }]);
});

test('delete erases the account with its sessions, grants, tokens, MFA data, links, documents, files and shares', async () => {
  const owner = await newAccount('leaver');
  const other = await newAccount('colleague');
  const browser = new Browser();
  const { request, callback } = await signInWith(browser, owner.email, 'openid email offline_access');
  const tokens = await exchangeCode(rp, request, callback);
  await enrolMfa(owner.id, owner.email);
  expect(await server.services.connection.collection('mfa_used').countDocuments({ accountId: owner.id })).toBe(1);
  await server.services.accountTokens.issue('reset-password', { accountId: owner.id, email: owner.email }, 3600);
  const documents = server.services.documents;
  const withFile = (await documents.create(callerOf(owner.id), { title: 'Mine, with a file' }, info)).doc._id;
  await documents.putFile(callerOf(owner.id), withFile, upload('private notes'), 1_000_000, undefined, info);
  await documents.addShare(callerOf(owner.id), withFile, other.email, 'viewer', info);
  const plain = (await documents.create(callerOf(owner.id), { title: 'Mine too' }, info)).doc._id;
  const theirs = (await documents.create(callerOf(other.id), { title: 'Theirs, shared with the leaver' }, info)).doc._id;
  await documents.addShare(callerOf(other.id), theirs, owner.email, 'editor', info);
  expect(await filesOf(withFile)).toBe(1);

  const report = await ok('delete', owner.email);
  expect(report).toEqual({
    id: owner.id, email: owner.email, sessions: 1, grants: 1, deleted: true,
    documents: { deleted: 2, transferred: 0, transferred_to: null }, shares_removed: 1,
  });
  expect(await server.services.accounts.get(owner.id)).toBeUndefined();
  expect([await rawDocument(withFile), await rawDocument(plain), await filesOf(withFile)]).toEqual([null, null, 0]);
  const kept = await rawDocument(theirs);
  expect([kept?.shares, kept?.acl]).toEqual([[], [`user:${other.id}`]]);
  expect(await server.services.store.sessionsOf(owner.id)).toEqual([]);
  expect(await server.services.store.grantsOf(owner.id)).toEqual([]);
  expect(await oidc.tokenIntrospection(rp.config, tokens.access_token)).toMatchObject({ active: false });
  expect(await oidc.tokenIntrospection(rp.config, tokens.refresh_token!)).toMatchObject({ active: false });
  expect(await promptNone(browser)).toBe('login_required');
  const { connection } = server.services;
  for (const name of ['mfa_used', 'account_tokens', 'mfa_challenges']) {
    expect([name, await connection.collection(name).countDocuments({ accountId: owner.id })]).toEqual([name, 0]);
  }
  expect((await events('account.delete')).at(-1)).toMatchObject({
    actor: { sub: 'operator:admin-tester' }, target: owner.id,
    details: { sessions: 1, grants: 1, documents_deleted: 2, documents_transferred: 0, transferred_to: null, shares_removed: 1 },
  });
  expect((await events('document.delete')).filter((e) => [withFile, plain].includes(e.target!)).map((e) => e.actor.sub))
    .toEqual(['operator:admin-tester', 'operator:admin-tester']);
  // Done is done: a second run finds no account.
  await fails(3, 'delete', owner.id);
});

test('delete run again after a crash half-way finishes the work', async () => {
  const account = await newAccount('crashed');
  const documents = server.services.documents;
  const marked = (await documents.create(callerOf(account.id), { title: 'Marked deleted, never finished' }, info)).doc._id;
  await documents.putFile(callerOf(account.id), marked, upload('left behind'), 1_000_000, undefined, info);
  const untouched = (await documents.create(callerOf(account.id), { title: 'Not reached' }, info)).doc._id;
  // Where the first run stopped: the account marked, one document marked deleted, nothing finished.
  await accountModel(server.services.connection).updateOne({ _id: account.id }, { disabled: true, deletingAt: new Date() });
  await server.services.connection.collection('documents').updateOne({ _id: marked as never }, { $set: { deletedAt: new Date() } });
  expect(await server.services.accounts.authenticate(account.email, password)).toBeUndefined();
  expect((await fails(1, 'enable', account.email)).stderr).toMatch(/being deleted/);

  expect(await ok('delete', account.email)).toMatchObject({ documents: { deleted: 2 } });
  expect([await rawDocument(marked), await rawDocument(untouched), await filesOf(marked)]).toEqual([null, null, 0]);
  expect(await server.services.accounts.get(account.id)).toBeUndefined();
});

test('delete --keep-documents --transfer-to: the documents, files included, belong to the other account', async () => {
  const leaving = await newAccount('handover');
  const heir = await newAccount('heir');
  const third = await newAccount('third');
  const documents = server.services.documents;
  const report = (await documents.create(callerOf(leaving.id), { title: 'Report' }, info)).doc._id;
  await documents.putFile(callerOf(leaving.id), report, upload('the figures'), 1_000_000, undefined, info);
  await documents.addShare(callerOf(leaving.id), report, heir.email, 'viewer', info);
  await documents.addShare(callerOf(leaving.id), report, third.email, 'editor', info);
  const draft = (await documents.create(callerOf(leaving.id), { title: 'Draft' }, info)).doc._id;

  await fails(64, 'delete', leaving.email, '--keep-documents');
  await fails(1, 'delete', leaving.email, '--keep-documents', '--transfer-to', leaving.email);
  await fails(3, 'delete', leaving.email, '--keep-documents', '--transfer-to', 'nobody@admin.example.com');
  expect(await server.services.accounts.get(leaving.id)).toBeDefined(); // refused before anything was done

  const result = await ok('delete', leaving.email, '--keep-documents', '--transfer-to', heir.email);
  expect(result).toMatchObject({ deleted: true, documents: { deleted: 0, transferred: 2, transferred_to: heir.id } });
  const moved = await documents.get(callerOf(heir.id), report);
  expect(moved.access).toBe('owner');
  expect(moved.doc.owner).toEqual({ type: 'user', id: heir.id });
  expect(moved.doc.shares.map((s) => [s.userId, s.role])).toEqual([[third.id, 'editor']]);
  expect(moved.doc.acl.sort()).toEqual([`user:${heir.id}`, `user:${third.id}`].sort());
  expect(await text((await documents.openFile(callerOf(heir.id), report)).stream)).toBe('the figures');
  expect((await documents.get(callerOf(heir.id), draft)).access).toBe('owner');
  expect(await server.services.accounts.get(leaving.id)).toBeUndefined();
  expect((await events('document.transfer')).filter((e) => e.target === report).map((e) => e.details)).toEqual([{ from: leaving.id, to: heir.id }]);
});

test('create, disable, enable, set-password and set-roles are audited as operator:NAME, a weak password besides', async () => {
  const email = `audited-${count}@admin.example.com`;
  const created = await ok<{ id: string }>('create', '--email', email, '--password', 'password1234', '--allow-weak-password');
  await ok('disable', email);
  await ok('enable', email);
  await ok('set-password', email, '--password', password);
  await ok('set-roles', email, '--role', 'staff');
  const mine = (await server.services.audit.tail({ actor: 'operator:admin-tester', limit: 200 })).filter((e) => e.target === created.id);
  expect(mine.map((e) => e.action)).toEqual([
    'account.create', 'account.password.weak-allowed.create', 'account.disable', 'account.enable', 'account.password.set', 'account.roles.set',
  ]);
  expect(mine.at(-1)!.details).toEqual({ roles: 'staff' });
});
