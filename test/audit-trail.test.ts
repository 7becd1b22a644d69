/**
 * The audit trail end to end: sign-in attempts through the real login pages (success, wrong
 * password, refused for too many), CLI changes under the operator who made them, and the
 * `audit tail --action` / `audit export --since` commands as real child processes.
 */
import { jest } from '@jest/globals';
import { Browser } from './support/browser.ts';
import { authorizationRequest, openLoginPage, registerRelyingParty, signIn, submitLogin, type RelyingParty } from './support/flows.ts';
import { runScript } from './support/cli.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { testRedisUrl } from './support/env.ts';
import { AuditLog } from '../src/audit/log.ts';

jest.setTimeout(180_000);

let server: TestServer;
let rp: RelyingParty;
let env: NodeJS.ProcessEnv;
let started: string;
const email = 'audited@example.com';
// Limits are counted in the Redis every suite shares: an address of this run's own.
const stranger = `nobody-${Date.now().toString(36)}@example.com`;
const password = 'a long and unusual passphrase 42';

interface Event { id: string; at: string; action: string; outcome: string; target: string | null; reason?: string; actor: { sub: string | null; clientId: string | null }; details?: Record<string, unknown>; ip: string }

const cli = (script: string, ...args: string[]) => runScript(script, args, env);

async function lines(...args: string[]): Promise<Event[]> {
  const result = await cli('audit', ...args);
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  return result.stdout.trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Event);
}

beforeAll(async () => {
  started = new Date().toISOString();
  // Two failures per email and minute, then refused.
  server = await startTestServer({ RATE_LIMIT_SIGNIN_PER_ACCOUNT: '2/60' });
  env = { ...process.env, MONGODB_URI: server.services.config.mongodbUri!, REDIS_URL: testRedisUrl(), NODE_ENV: 'test', LOG_LEVEL: 'error' };
  await server.services.accounts.create({ email, password, emailVerified: true });
  rp = await registerRelyingParty(server);
});

afterAll(async () => {
  await server?.close();
});

async function wrongPassword(address: string): Promise<number> {
  const browser = new Browser();
  const request = await authorizationRequest(rp);
  const page = await openLoginPage(browser, server, request.url);
  return (await submitLogin(browser, server, page, address, 'not the password at all')).status;
}

test('every sign-in attempt is recorded with its outcome, method, client and address, and no secret', async () => {
  expect(await wrongPassword(email)).toBe(401);
  expect(await wrongPassword(stranger)).toBe(401);
  expect(await wrongPassword(stranger)).toBe(401);
  expect(await wrongPassword(stranger)).toBe(429);
  const request = await authorizationRequest(rp);
  expect((await signIn(new Browser(), server, request.url, email, password)).status).toBe(303);

  const account = await server.services.accounts.get(email);
  const events = await lines('tail', '--action', 'signin.');
  expect(events.map((e) => [e.action, e.outcome, e.reason ?? null])).toEqual([
    ['signin.failure', 'denied', 'invalid_credentials'],
    ['signin.failure', 'denied', 'invalid_credentials'],
    ['signin.failure', 'denied', 'invalid_credentials'],
    ['signin.refused', 'denied', 'too_many_attempts'],
    ['signin.success', 'success', null],
  ]);
  expect(events[0]).toMatchObject({ target: null, actor: { clientId: rp.client.client_id }, details: { step: 'password', email }, ip: '127.0.0.1' });
  expect(events[4]).toMatchObject({ target: account!.id, actor: { sub: account!.id, clientId: rp.client.client_id }, details: { method: 'password' } });
  const raw = (await cli('audit', 'tail', '--action', 'signin.')).stdout;
  expect(raw).not.toContain(password);
  expect(raw).not.toContain('not the password at all');

  // An exact action, and the refusal alone.
  expect((await lines('tail', '--action', 'signin.refused')).map((e) => e.details?.email)).toEqual([stranger]);
});

test('CLI changes are recorded under --actor (or the OS user); export pages through a time range as JSON lines', async () => {
  const created = await cli('client', 'create', '--name', 'Audited app', '--redirect-uri', 'https://app.example.com/cb', '--actor', 'alice');
  expect(created.code).toBe(0);
  const clientId = (JSON.parse(created.stdout) as { client_id: string }).client_id;
  expect((await cli('client', 'delete', clientId)).code).toBe(0);

  const alice = await lines('tail', '--actor', 'operator:alice');
  expect(alice.map((e) => [e.action, e.target])).toEqual([['client.create', clientId]]);
  const deleted = (await lines('tail', '--action', 'client.delete'))[0]!;
  expect(deleted.actor.sub).toMatch(/^operator:[\w.@-]+$/);
  expect(deleted.actor.sub).not.toBe('operator:alice');
  expect(JSON.stringify(alice)).not.toMatch(/client_secret/);

  const all = await lines('export', '--since', started);
  expect(all.length).toBeGreaterThanOrEqual(7);
  expect(all.map((e) => e.id)).toEqual([...all.map((e) => e.id)].sort());
  const middle = all[3]!.at;
  const before = await lines('export', '--since', started, '--until', middle);
  expect(before.every((e) => e.at < middle)).toBe(true);
  expect((await lines('export', '--since', middle)).every((e) => e.at >= middle)).toBe(true);
  expect((await lines('export', '--since', new Date(Date.now() + 60_000).toISOString()))).toEqual([]);

  for (const args of [['export'], ['export', '--since', 'yesterday'], ['tail', '--action', '{"$ne":1}'], ['tail', '--until', started]]) {
    const refused = await cli('audit', ...args);
    expect(refused.code).toBe(64);
    expect(refused.stdout).toBe('');
  }
});

test('export pages through more events than one page, in order, each once', async () => {
  const since = new Date(Date.now() + 3_600_000);
  const events = Array.from({ length: 2_345 }, (_, i) => AuditLog.event({
    actor: { sub: 'bulk', clientId: null }, action: 'bulk.write', target: String(i), outcome: 'success', ip: '127.0.0.1', requestId: null,
  }, new Date(since.getTime() + i)));
  await server.services.connection.collection('audit_events').insertMany(events as never[]);
  const exported = await lines('export', '--since', since.toISOString(), '--action', 'bulk.write');
  expect(exported.map((e) => e.target)).toEqual(events.map((e) => e.target));
});
