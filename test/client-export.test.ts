/**
 * Clients as code: `client export` and `client import` run as real child processes against a
 * real database, checked through the same services the server uses. An export re-imported
 * changes nothing; an edited one creates, updates and leaves alone exactly what it says, under
 * the same rules as create and update; a bad document changes nothing at all.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID } from '../src/oidc/provider.ts';
import { openServices, type Services } from '../src/services.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';

// Every CLI call is a fresh process that opens all the services (seconds each on a busy machine).
jest.setTimeout(240_000);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const mongoUri = testMongoUri('export');
const env: NodeJS.ProcessEnv = { ...process.env, MONGODB_URI: mongoUri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error', NODE_ENV: 'test' };

interface Result { code: number; stdout: string; stderr: string }
type Json = Record<string, any>;

function cli(args: string[], stdin?: string): Promise<Result> {
  return new Promise((resolve) => {
    const child = execFile('node', ['scripts/client.ts', ...args], { cwd: root, env, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
    if (stdin !== undefined) child.stdin!.end(stdin);
  });
}

async function ok(args: string[], stdin?: string): Promise<Json> {
  const result = await cli(args, stdin);
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as Json;
}

async function fails(args: string[], code = 1): Promise<string> {
  const result = await cli(args);
  expect({ code: result.code, stdout: result.stdout }).toEqual({ code, stdout: '' });
  expect(result.stderr).toMatch(/^error: /);
  return result.stderr;
}

let services: Services;
let dir: string;
const secrets: Record<string, string> = {};
let web: Json;
let spa: Json;
let batch: Json;

async function fileWith(name: string, document: unknown): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, JSON.stringify(document, null, 2));
  return file;
}

const outcomes = (result: Json) => Object.fromEntries((result.clients as Json[]).map((r) => [r.client_id, r.outcome]));
const stored = async (id: string) => (await services.clients.get(id))!;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'client-export-'));
  services = await openServices(
    loadConfig({ NODE_ENV: 'test', MONGODB_URI: mongoUri, LOG_LEVEL: 'silent', COOKIE_KEYS: 'x'.repeat(32), CLIENT_CACHE_SECONDS: '0' }),
    createLogger('silent'),
  );
  await services.clients.ensure(ACCOUNT_CONSOLE_CLIENT_ID, {
    name: 'Your account', isPublic: true, grantTypes: ['authorization_code'], scope: 'openid', redirectUris: ['http://127.0.0.1:9/account/callback'],
  });
  web = await ok(['create', '--name', 'Web', '--redirect-uri', 'https://web.example.com/cb', '--require-mfa', '--require-dpop',
    '--scope', 'openid email documents:read']);
  spa = await ok(['create', '--name', 'SPA', '--public', '--application-type', 'native', '--redirect-uri', 'http://127.0.0.1/cb']);
  batch = await ok(['create', '--name', 'Batch', '--grant-type', 'client_credentials', '--introspect-for', 'https://api.example.com/']);
  secrets[web.client_id] = web.client_secret;
  secrets[batch.client_id] = batch.client_secret;
});

afterAll(async () => {
  await services?.connection.dropDatabase();
  await services?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('--require-dpop registers dpop_bound_access_tokens, --no-require-dpop removes it', async () => {
  expect(web.dpop_bound_access_tokens).toBe(true);
  expect((await services.provider.Client.find(web.client_id))?.dpopBoundAccessTokens).toBe(true);
  const relaxed = await ok(['update', spa.client_id, '--require-dpop']);
  expect(relaxed.dpop_bound_access_tokens).toBe(true);
  expect(await ok(['update', spa.client_id, '--no-require-dpop'])).not.toHaveProperty('dpop_bound_access_tokens');
});

test('export prints every client but the built-in one, without secrets; by id only those', async () => {
  const exported = await ok(['export']);
  expect(Object.keys(exported)).toEqual(['clients']);
  expect((exported.clients as Json[]).map((c) => c.client_id).sort()).toEqual([web.client_id, spa.client_id, batch.client_id].sort());
  const text = JSON.stringify(exported);
  for (const secret of Object.values(secrets)) expect(text).not.toContain(secret);
  expect(text).not.toContain('"client_secret"');
  expect((exported.clients as Json[]).find((c) => c.client_id === web.client_id)).toMatchObject({
    client_name: 'Web', redirect_uris: ['https://web.example.com/cb'], require_mfa: true, dpop_bound_access_tokens: true, scope: 'openid email documents:read',
  });
  const one = await ok(['export', batch.client_id]);
  expect(one.clients).toHaveLength(1);
  expect(one.clients[0]).toMatchObject({ client_id: batch.client_id, grant_types: ['client_credentials'], introspect_for: ['https://api.example.com/'] });
  await fails(['export', 'no-such-client'], 3);
});

test('importing an export changes nothing, and says so per client', async () => {
  const file = await fileWith('same.json', await ok(['export']));
  const before = await services.clients.list();
  const result = await ok(['import', file]);
  expect(outcomes(result)).toEqual({ [web.client_id]: 'unchanged', [spa.client_id]: 'unchanged', [batch.client_id]: 'unchanged' });
  expect(result.summary).toEqual({ created: 0, updated: 0, unchanged: 3, deleted: 0 });
  expect(await services.clients.list()).toEqual(before);
});

test('an edited document creates and updates; secrets are kept, a new one printed once; a second run changes nothing', async () => {
  const { clients } = await ok(['export']);
  const edited = (clients as Json[]).map((c) => {
    if (c.client_id === web.client_id) {
      // A field left out goes back to its default: require_mfa is dropped.
      const { require_mfa: _mfa, ...rest } = c;
      return { ...rest, client_name: 'Web, renamed', redirect_uris: ['https://web.example.com/cb', 'https://web.example.com/cb2'] };
    }
    return c;
  });
  const added = { client_id: 'gitops-reporting', client_name: 'Reporting', redirect_uris: ['https://reports.example.com/cb'], scope: 'openid profile' };
  const file = await fileWith('edited.json', { clients: [...edited, added] });

  const first = await ok(['import', file]);
  expect(outcomes(first)).toEqual({ [web.client_id]: 'updated', [spa.client_id]: 'unchanged', [batch.client_id]: 'unchanged', 'gitops-reporting': 'created' });
  const created = (first.clients as Json[]).find((r) => r.client_id === 'gitops-reporting')!;
  expect(created.client_secret).toEqual(expect.any(String));
  expect((first.clients as Json[]).filter((r) => r.client_secret)).toHaveLength(1);

  expect(await stored(web.client_id)).toMatchObject({ client_name: 'Web, renamed', client_secret: secrets[web.client_id], dpop_bound_access_tokens: true });
  expect(await stored(web.client_id)).not.toHaveProperty('require_mfa');
  expect((await services.provider.Client.find('gitops-reporting'))?.clientSecret).toBe(created.client_secret);
  expect(await stored('gitops-reporting')).toMatchObject({ token_endpoint_auth_method: 'client_secret_basic', grant_types: ['authorization_code', 'refresh_token'] });

  const second = await ok(['import', file]);
  expect(second.summary).toEqual({ created: 0, updated: 0, unchanged: 4, deleted: 0 });
  expect(JSON.stringify(second)).not.toContain('"client_secret"');
  expect((await services.provider.Client.find('gitops-reporting'))?.clientSecret).toBe(created.client_secret);

  // Audited, per change, with the operator.
  const events = await services.audit.tail({ action: 'client.', limit: 20 });
  expect(events.filter((e) => (e.details as Json | undefined)?.source === 'import').map((e) => [e.action, e.target]).sort())
    .toEqual([['client.create', 'gitops-reporting'], ['client.update', web.client_id]].sort());
});

test('import reads stdin with "-"', async () => {
  const document = await ok(['export', spa.client_id]);
  document.clients[0].client_name = 'SPA from stdin';
  const result = await ok(['import', '-'], JSON.stringify(document));
  expect(outcomes(result)).toEqual({ [spa.client_id]: 'updated' });
  expect((await stored(spa.client_id)).client_name).toBe('SPA from stdin');
});

test('a document with one bad client changes nothing; the rules of create and update apply', async () => {
  const before = await services.clients.list();
  const good = { client_id: 'would-be-created', client_name: 'Good', redirect_uris: ['https://good.example.com/cb'] };
  const bad: [Json, RegExp][] = [
    [{ client_id: 'bad-field', client_name: 'Bad', redirect_uris: ['https://bad.example.com/cb'], logo_uri: 'https://x.example/l.png' }, /logo_uri/],
    [{ client_id: 'bad-public', client_name: 'Bad', token_endpoint_auth_method: 'none', grant_types: ['client_credentials'] }, /public client/],
    [{ client_id: 'bad-uri', client_name: 'Bad', redirect_uris: ['notaurl'] }, /redirect_uris/],
    [{ client_id: 'bad-type', client_name: 7 }, /client_name/],
    [{ client_id: ACCOUNT_CONSOLE_CLIENT_ID, client_name: 'Mine now', redirect_uris: ['https://evil.example.com/cb'] }, /built into the server/],
    [{ client_id: '-looks-like-an-option', client_name: 'Bad' }, /client ids/],
  ];
  for (const [entry, message] of bad) {
    const file = await fileWith('bad.json', { clients: [good, entry] });
    expect(await fails(['import', file])).toMatch(message);
  }
  expect(await fails(['import', await fileWith('dup.json', { clients: [good, good] })])).toMatch(/twice/);
  await writeFile(path.join(dir, 'broken.json'), '{"clients": [');
  expect(await fails(['import', path.join(dir, 'broken.json')])).toMatch(/not JSON/);
  expect(await fails(['import', path.join(dir, 'missing.json')])).toMatch(/cannot read/);
  expect((await cli(['import'])).code).toBe(64);
  expect(await services.clients.list()).toEqual(before);
});

test('--prune deletes the clients the document does not name, never the built-in one', async () => {
  const file = await fileWith('pruned.json', await ok(['export', web.client_id]));
  const result = await ok(['import', file, '--prune']);
  expect(outcomes(result)).toEqual({ [web.client_id]: 'unchanged', [spa.client_id]: 'deleted', [batch.client_id]: 'deleted', 'gitops-reporting': 'deleted' });
  expect((await services.clients.list()).map((c) => c.client_id).sort()).toEqual([ACCOUNT_CONSOLE_CLIENT_ID, web.client_id].sort());
});
