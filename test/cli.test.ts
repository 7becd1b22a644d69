/**
 * The admin CLI (scripts/client.ts, user.ts, audit.ts) run as real child processes against a real
 * database, and checked through the same services the server uses: what the CLI writes is what
 * the provider and the sign-in code read.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices, type Services } from '../src/services.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';

const run = promisify(execFile);

// Every CLI call is a fresh process that opens all the services (3–5 s alone, more while other
// suites keep both cores busy); tests that make several calls need more than the default.
jest.setTimeout(180_000);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const mongoUri = testMongoUri('cli');
const env: NodeJS.ProcessEnv = { ...process.env, MONGODB_URI: mongoUri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error', NODE_ENV: 'test' };

interface Result { code: number; stdout: string; stderr: string }

type Script = 'client' | 'user' | 'audit';

async function cli(script: Script, ...args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await run('node', [`scripts/${script}.ts`, ...args], { cwd: root, env, timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw error;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** A successful call: exit 0, exactly one JSON document on stdout, no log lines on stderr. */
async function ok<T = Record<string, unknown>>(script: Script, ...args: string[]): Promise<T> {
  const result = await cli(script, ...args);
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  return JSON.parse(result.stdout) as T;
}

async function fails(script: Script, ...args: string[]): Promise<Result> {
  const result = await cli(script, ...args);
  expect(result.code).not.toBe(0);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(/^error: /);
  return result;
}

/** Usage errors: non-zero, the usage text on stderr, nothing on stdout. */
async function usage(script: Script, ...args: string[]): Promise<Result> {
  const result = await fails(script, ...args);
  expect(result.code).toBe(64); // EX_USAGE
  expect(result.stderr).toContain(`usage: npm run -s ${script} -- <command>`);
  return result;
}

type Client = Record<string, unknown> & { client_id: string; client_secret?: string };
type Account = { id: string; email: string; email_verified: boolean; roles: string[]; disabled: boolean; name: string | null };

let services: Services;

beforeAll(async () => {
  services = await openServices(
    loadConfig({ NODE_ENV: 'test', MONGODB_URI: mongoUri, LOG_LEVEL: 'silent', COOKIE_KEYS: 'x'.repeat(32), CLIENT_CACHE_SECONDS: '0' }),
    createLogger('silent'),
  );
});

afterAll(async () => {
  await services?.connection.dropDatabase();
  await services?.close();
});

describe('client', () => {
  let confidential: Client;
  let publicClient: Client;
  let service: Client;

  test('create prints one JSON client with a secret; --public has none; client_credentials needs no redirect URI', async () => {
    confidential = await ok<Client>('client', 'create', '--name', 'Web App',
      '--redirect-uri', 'https://app.example.com/cb', '--redirect-uri', 'https://app.example.com/cb2',
      '--post-logout-redirect-uri', 'https://app.example.com/bye');
    expect(confidential).toMatchObject({
      client_id: expect.any(String),
      client_secret: expect.any(String),
      client_name: 'Web App',
      redirect_uris: ['https://app.example.com/cb', 'https://app.example.com/cb2'],
      post_logout_redirect_uris: ['https://app.example.com/bye'],
      token_endpoint_auth_method: 'client_secret_basic',
    });

    publicClient = await ok<Client>('client', 'create', '--name', 'SPA', '--public', '--redirect-uri', 'https://spa.example.com/cb');
    expect(publicClient.token_endpoint_auth_method).toBe('none');
    expect(publicClient).not.toHaveProperty('client_secret');

    service = await ok<Client>('client', 'create', '--name', 'Batch', '--grant-type', 'client_credentials');
    expect(service).toMatchObject({ grant_types: ['client_credentials'], response_types: [], redirect_uris: [] });
    expect(service.client_secret).toEqual(expect.any(String));

    await fails('client', 'create', '--name', 'Bad', '--public', '--grant-type', 'client_credentials');

    const stored = await services.provider.Client.find(confidential.client_id);
    expect(stored?.clientSecret).toBe(confidential.client_secret);
    expect(stored?.redirectUris).toEqual(['https://app.example.com/cb', 'https://app.example.com/cb2']);
    expect((await services.provider.Client.find(publicClient.client_id))?.clientAuthMethod).toBe('none');
  });

  test('list and show never print a secret; show of an unknown id fails', async () => {
    const listed = await ok<Client[]>('client', 'list');
    // The provider's own account pages are a client too, registered at start.
    expect(listed.map((c) => c.client_id).sort()).toEqual(['account-console', confidential.client_id, publicClient.client_id, service.client_id].sort());
    for (const client of listed) expect(client).not.toHaveProperty('client_secret');

    const shown = await ok<Client>('client', 'show', confidential.client_id);
    expect(shown).toMatchObject({ client_id: confidential.client_id, client_name: 'Web App' });
    expect(shown).not.toHaveProperty('client_secret');

    await fails('client', 'show', 'no-such-client');
  });

  test('update keeps the secret, rotate-secret replaces it, delete removes the client', async () => {
    const updated = await ok<Client>('client', 'update', confidential.client_id, '--name', 'Renamed App');
    expect(updated).toMatchObject({ client_id: confidential.client_id, client_name: 'Renamed App', client_secret: confidential.client_secret });
    expect(updated.redirect_uris).toEqual(confidential.redirect_uris);

    const rotated = await ok<Client>('client', 'rotate-secret', confidential.client_id);
    expect(rotated.client_secret).toEqual(expect.any(String));
    expect(rotated.client_secret).not.toBe(confidential.client_secret);
    const stored = await services.provider.Client.find(confidential.client_id);
    expect(stored?.clientSecret).toBe(rotated.client_secret);
    expect(stored?.clientName).toBe('Renamed App');

    expect(await ok('client', 'delete', service.client_id)).toEqual({ client_id: service.client_id, deleted: true });
    await fails('client', 'show', service.client_id);
    expect(await services.provider.Client.find(service.client_id)).toBeUndefined();
  });

  test('bad arguments exit non-zero with an error on stderr and write nothing', async () => {
    const before = await services.clients.list();
    expect((await usage('client')).stderr).toContain('missing command');
    expect((await usage('client', 'frobnicate')).stderr).toContain('unknown command "frobnicate"');
    expect((await usage('client', 'create', '--name', 'X', '--redirect-uri', 'https://a.example.com/cb', '--bogus')).stderr)
      .toContain('--bogus');
    expect((await usage('client', 'create', '--redirect-uri', 'https://a.example.com/cb')).stderr).toContain('--name is required');
    // Metadata rejected by oidc-provider's own schema is an AppError (exit 1, message only), not a usage error.
    const badUri = await fails('client', 'create', '--name', 'Bad URI', '--redirect-uri', 'notaurl');
    expect(badUri).toMatchObject({ code: 1, stderr: 'error: redirect_uris must only contain valid uris\n' });

    const after = await ok<Client[]>('client', 'list');
    expect(after.map((c) => c.client_id)).toEqual(before.map((c) => c.client_id));
    expect(after.some((c) => c.client_name === 'Bad URI')).toBe(false);
  });
});

describe('user', () => {
  const email = 'grace@example.com';
  const newPassword = 'another long enough password';
  let account: Account;

  test('create prints the account without any password material; duplicates and short passwords fail', async () => {
    const result = await cli('user', 'create', '--email', 'Grace@Example.com', '--password', 'a long enough password',
      '--name', 'Grace', '--verified', '--role', 'admin');
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
    expect(result.stdout).not.toMatch(/password|hash|\$argon2/i);
    account = JSON.parse(result.stdout) as Account;
    expect(account).toMatchObject({ id: expect.any(String), email, name: 'Grace', email_verified: true, roles: ['admin'], disabled: false });

    await fails('user', 'create', '--email', 'GRACE@example.COM', '--password', 'yet another long password');
    await fails('user', 'create', '--email', 'short@example.com', '--password', 'abc');

    const listed = await ok<Account[]>('user', 'list');
    expect(listed.map((a) => a.email)).toEqual([email]);
    expect(JSON.stringify(listed)).not.toMatch(/password|hash|\$argon2/i);
    expect(await services.accounts.authenticate(email, 'a long enough password')).toBe(account.id);
  });

  test('disable and enable flip sign-in; set-password changes the password the server checks', async () => {
    expect(await ok<Account>('user', 'disable', 'GRACE@example.com')).toMatchObject({ id: account.id, disabled: true });
    expect(await services.accounts.authenticate(email, 'a long enough password')).toBeUndefined();

    expect(await ok<Account>('user', 'enable', account.id)).toMatchObject({ id: account.id, disabled: false });
    expect(await services.accounts.authenticate(email, 'a long enough password')).toBe(account.id);

    const changed = await ok<Account>('user', 'set-password', account.id, '--password', newPassword);
    expect(changed).toMatchObject({ id: account.id, email });
    expect(JSON.stringify(changed)).not.toMatch(/password|hash/i);
    expect(await services.accounts.authenticate(email, newPassword)).toBe(account.id);
    expect(await services.accounts.authenticate(email, 'a long enough password')).toBeUndefined();
  });

  test('set-roles replaces the roles; taking one away signs the account out everywhere', async () => {
    expect(await ok<Account>('user', 'set-roles', email, '--role', 'admin', '--role', 'editor')).toMatchObject({ roles: ['admin', 'editor'] });
    expect(await services.accounts.hasRole(account.id, 'admin')).toBe(true);
    const grants = services.store.collection('Grant');
    await services.store.adapterFor('Grant').upsert('grant-of-grace', { jti: 'grant-of-grace', kind: 'Grant', accountId: account.id }, 600);
    expect(await ok<Account>('user', 'set-roles', account.id, '--role', 'admin', '--role', 'editor', '--role', 'viewer')).toMatchObject({ roles: ['admin', 'editor', 'viewer'] });
    expect(await grants.countDocuments({ _id: 'grant-of-grace' })).toBe(1); // only added: nothing revoked
    expect(await ok<Account>('user', 'set-roles', account.id)).toMatchObject({ roles: [] });
    expect(await services.accounts.hasRole(account.id, 'admin')).toBe(false);
    expect(await grants.countDocuments({ _id: 'grant-of-grace' })).toBe(0);
    await fails('user', 'set-roles', account.id, '--role', 'Not A Role');
    expect(await services.accounts.hasRole(account.id, 'admin')).toBe(false);
  });

  test('--password-stdin takes the password from standard input instead of the command line', async () => {
    const child = execFile('node', ['scripts/user.ts', 'set-password', email, '--password-stdin'], { cwd: root, env, timeout: 30_000 });
    child.stdin!.end('typed into stdin, not argv\n');
    const [code] = await Promise.all([
      new Promise<number | null>((resolve) => child.on('exit', resolve)),
      new Promise((resolve) => child.stdout!.on('end', resolve)),
    ]);
    expect(code).toBe(0);
    expect(await services.accounts.authenticate(email, 'typed into stdin, not argv')).toBe(account.id);
    await usage('user', 'set-password', email, '--password', 'x'.repeat(20), '--password-stdin');
  });
});

describe('audit', () => {
  test('tail prints the latest events as JSON lines, oldest first, filtered by actor and time', async () => {
    const base = { actor: { sub: null, clientId: 'c1' }, target: null, ip: '127.0.0.1', requestId: null } as const;
    await services.audit.record({ ...base, action: 'document.create', outcome: 'success', actor: { sub: 'alice', clientId: 'c1' } });
    await services.audit.record({ ...base, action: 'document.read', outcome: 'denied', reason: 'not-found', actor: { sub: 'mallory', clientId: 'c2' } });
    const cutoff = new Date();
    await new Promise((resolve) => setTimeout(resolve, 5));
    await services.audit.record({ ...base, action: 'document.delete', outcome: 'success', actor: { sub: 'alice', clientId: 'c1' } });

    const lines = async (...args: string[]) => {
      const result = await cli('audit', 'tail', ...args);
      expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
      return result.stdout.trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, any>);
    };
    const all = await lines();
    expect(all.map((e) => e.action)).toEqual(['document.create', 'document.read', 'document.delete']);
    expect(all[1]).toMatchObject({ outcome: 'denied', reason: 'not-found', actor: { sub: 'mallory', clientId: 'c2' }, ip: '127.0.0.1' });
    expect(new Date(all[0]!.at).toISOString()).toBe(all[0]!.at);
    expect((await lines('--actor', 'alice')).map((e) => e.action)).toEqual(['document.create', 'document.delete']);
    expect((await lines('--since', cutoff.toISOString())).map((e) => e.action)).toEqual(['document.delete']);
    expect((await lines('--limit', '1')).map((e) => e.action)).toEqual(['document.delete']);
  });

  test('bad arguments are usage errors', async () => {
    for (const args of [[], ['head'], ['tail', '--since', 'yesterday'], ['tail', '--limit', '0'], ['tail', '--actor', '{"$ne":1}']]) {
      const result = await fails('audit', ...args);
      expect(result.code).toBe(64);
      expect(result.stderr).toContain('usage: npm run -s audit -- tail');
    }
  });
});
