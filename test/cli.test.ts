/**
 * The admin CLI (scripts/client.ts, user.ts, audit.ts) run as real child processes against a real
 * database, and checked through the same services the server uses: what the CLI writes is what
 * the provider and the sign-in code read.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair } from 'jose';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID } from '../src/oidc/provider.ts';
import { openServices, type Services } from '../src/services.ts';
import { runScript, type ScriptResult } from './support/cli.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';


// Every CLI call is a fresh process that opens all the services (3–5 s alone, more while other
// suites keep both cores busy); tests that make several calls need more than the default.
jest.setTimeout(180_000);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const mongoUri = testMongoUri('cli');
const env: NodeJS.ProcessEnv = { ...process.env, MONGODB_URI: mongoUri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error', NODE_ENV: 'test' };

type Result = ScriptResult;

type Script = 'client' | 'user' | 'audit';

function cli(script: Script, ...args: string[]): Promise<Result> {
  return runScript(script, args, env, 30_000);
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
  // What a serving process registers at start (CLI processes never write it).
  await services.clients.ensure(ACCOUNT_CONSOLE_CLIENT_ID, {
    name: 'Your account', isPublic: true, grantTypes: ['authorization_code'], scope: 'openid', redirectUris: ['http://127.0.0.1:9/account/callback'],
  });
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
      // Hex: an id never starts with "-", which a command line would take for an option.
      client_id: expect.stringMatching(/^[0-9a-f]{32}$/),
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
    // The provider's own account pages are a client too, registered by the server at start.
    expect(listed.map((c) => c.client_id).sort()).toEqual(['account-console', confidential.client_id, publicClient.client_id, service.client_id].sort());
    for (const client of listed) expect(client).not.toHaveProperty('client_secret');

    const shown = await ok<Client>('client', 'show', confidential.client_id);
    expect(shown).toMatchObject({ client_id: confidential.client_id, client_name: 'Web App' });
    expect(shown).not.toHaveProperty('client_secret');

    await fails('client', 'show', 'no-such-client');
  });

  test('update keeps the secret, rotate-secret replaces it, delete removes the client', async () => {
    const updated = await ok<Client>('client', 'update', confidential.client_id, '--name', 'Renamed App');
    expect(updated).toMatchObject({ client_id: confidential.client_id, client_name: 'Renamed App' });
    expect(updated).not.toHaveProperty('client_secret'); // printed once, by create
    expect(updated.redirect_uris).toEqual(confidential.redirect_uris);
    expect((await services.provider.Client.find(confidential.client_id))?.clientSecret).toBe(confidential.client_secret);

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

describe('client options', () => {
  type Jwk = Record<string, unknown>;
  let publicJwk: Jwk;
  let privateJwk: Jwk;
  const stored = async (id: string) => (await services.clients.get(id))!;

  beforeAll(async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
    [publicJwk, privateJwk] = await Promise.all([exportJWK(publicKey), exportJWK(privateKey)]);
  });

  test('--pkce optional is for confidential clients only; a client cannot become public without PKCE', async () => {
    const relaxed = await ok<Client>('client', 'create', '--name', 'Legacy server', '--redirect-uri', 'https://legacy.example.com/cb', '--pkce', 'optional');
    expect(relaxed).toMatchObject({ pkce_required: false, token_endpoint_auth_method: 'client_secret_basic' });

    const refused = await fails('client', 'create', '--name', 'SPA', '--public', '--redirect-uri', 'https://spa.example.com/cb', '--pkce', 'optional');
    expect(refused).toMatchObject({ code: 1, stderr: expect.stringContaining('public client') });
    expect(refused.stderr).toContain('PKCE');

    expect((await fails('client', 'update', relaxed.client_id, '--public')).stderr).toContain('always requires PKCE');
    expect((await fails('client', 'update', relaxed.client_id, '--token-endpoint-auth-method', 'none')).stderr).toContain('always requires PKCE');
    expect(await stored(relaxed.client_id)).toMatchObject({ token_endpoint_auth_method: 'client_secret_basic', pkce_required: false });

    // Asking for PKCE again in the same update is how such a client is made public.
    const madePublic = await ok<Client>('client', 'update', relaxed.client_id, '--public', '--pkce', 'required');
    expect(madePublic).toMatchObject({ token_endpoint_auth_method: 'none', pkce_required: true });
    expect(await stored(relaxed.client_id)).not.toHaveProperty('client_secret');

    expect((await usage('client', 'update', relaxed.client_id, '--pkce', 'sometimes')).stderr).toContain('--pkce must be required or optional');
  });

  test('each token endpoint auth method; only the secret methods have a secret', async () => {
    const cb = ['--redirect-uri', 'https://methods.example.com/cb'];
    const basic = await ok<Client>('client', 'create', '--name', 'Basic', ...cb, '--token-endpoint-auth-method', 'client_secret_basic');
    const post = await ok<Client>('client', 'create', '--name', 'Post', ...cb, '--token-endpoint-auth-method', 'client_secret_post');
    const none = await ok<Client>('client', 'create', '--name', 'None', ...cb, '--token-endpoint-auth-method', 'none');
    const jwt = await ok<Client>('client', 'create', '--name', 'JWT', ...cb, '--token-endpoint-auth-method', 'private_key_jwt', '--jwks', JSON.stringify({ keys: [publicJwk] }));
    for (const [client, method] of [[basic, 'client_secret_basic'], [post, 'client_secret_post'], [none, 'none'], [jwt, 'private_key_jwt']] as const) {
      expect(client.token_endpoint_auth_method).toBe(method);
      expect((await services.provider.Client.find(client.client_id))?.clientAuthMethod).toBe(method);
    }
    expect(basic.client_secret).toEqual(expect.any(String));
    expect(post.client_secret).toEqual(expect.any(String));
    expect(none).not.toHaveProperty('client_secret');
    expect(jwt).not.toHaveProperty('client_secret');
    expect(jwt.jwks).toEqual({ keys: [publicJwk] });
    expect((await fails('client', 'rotate-secret', jwt.client_id)).stderr).toContain('has no secret');

    expect((await fails('client', 'create', '--name', 'Both', ...cb, '--public', '--token-endpoint-auth-method', 'client_secret_post')).stderr)
      .toContain('a public client has token endpoint auth method none');
    expect((await usage('client', 'create', '--name', 'X', ...cb, '--token-endpoint-auth-method', 'client_secret_jwt')).stderr)
      .toContain('--token-endpoint-auth-method must be');

    // Back to a secret method: a new secret, printed by this update because it is the only time it can be.
    const switched = await ok<Client>('client', 'update', jwt.client_id, '--token-endpoint-auth-method', 'client_secret_post');
    expect(switched).toMatchObject({ token_endpoint_auth_method: 'client_secret_post', client_secret: expect.any(String) });
    expect(switched).not.toHaveProperty('jwks');
    expect((await services.provider.Client.find(jwt.client_id))?.clientSecret).toBe(switched.client_secret);
    expect(await ok<Client>('client', 'update', jwt.client_id, '--name', 'JWT renamed')).not.toHaveProperty('client_secret');

    // And to private_key_jwt: the secret is dropped, not kept around.
    await ok('client', 'update', post.client_id, '--token-endpoint-auth-method', 'private_key_jwt', '--jwks-uri', 'https://keys.example.com/jwks');
    expect(await stored(post.client_id)).toMatchObject({ jwks_uri: 'https://keys.example.com/jwks' });
    expect(await stored(post.client_id)).not.toHaveProperty('client_secret');
  });

  test('private_key_jwt keys: public JWKs only, https (or loopback http) jwks_uri, exactly one of the two', async () => {
    const jwt = ['--name', 'Keys', '--redirect-uri', 'https://keys.example.com/cb', '--token-endpoint-auth-method', 'private_key_jwt'];
    expect((await fails('client', 'create', ...jwt, '--jwks', JSON.stringify({ keys: [privateJwk] }))).stderr).toContain('public keys only');
    expect((await fails('client', 'create', ...jwt, '--jwks', JSON.stringify({ keys: [] }))).stderr).toContain('JSON Web Key Set');
    expect((await usage('client', 'create', ...jwt, '--jwks', '{not json')).stderr).toContain('--jwks must be JSON');
    for (const uri of ['http://keys.example.com/jwks', 'notaurl', 'https://user:pw@keys.example.com/jwks']) {
      expect((await fails('client', 'create', ...jwt, '--jwks-uri', uri)).stderr).toContain('jwks_uri must be an https URL');
    }
    expect((await fails('client', 'create', ...jwt)).stderr).toContain('--jwks-uri URL or --jwks JSON');
    expect((await fails('client', 'create', ...jwt, '--jwks-uri', 'https://keys.example.com/jwks', '--jwks', JSON.stringify({ keys: [publicJwk] }))).stderr)
      .toContain('not both');
    expect((await fails('client', 'create', '--name', 'Secret', '--redirect-uri', 'https://keys.example.com/cb', '--jwks-uri', 'https://keys.example.com/jwks')).stderr)
      .toContain('only for token endpoint auth method private_key_jwt');

    const loopback = await ok<Client>('client', 'create', ...jwt, '--jwks-uri', 'http://127.0.0.1:8080/jwks');
    expect(loopback).toMatchObject({ jwks_uri: 'http://127.0.0.1:8080/jwks' });
    expect(loopback).not.toHaveProperty('client_secret');
  });

  test('--first-party, --id-token-claims and --introspect-for are stored and cleared', async () => {
    const api = 'https://api.example.com/';
    const client = await ok<Client>('client', 'create', '--name', 'Console', '--redirect-uri', 'https://console.example.com/cb',
      '--first-party', '--id-token-claims', 'minimal', '--introspect-for', api, '--introspect-for', 'https://other.example.com/');
    expect(client).toMatchObject({ first_party: true, id_token_claims: 'minimal', introspect_for: [api, 'https://other.example.com/'] });

    const cleared = await ok<Client>('client', 'update', client.client_id, '--no-first-party', '--no-introspect-for', '--id-token-claims', 'full');
    expect(cleared).toMatchObject({ id_token_claims: 'full' });
    expect(cleared).not.toHaveProperty('first_party');
    expect(cleared).not.toHaveProperty('introspect_for');

    expect((await fails('client', 'create', '--name', 'SPA', '--public', '--redirect-uri', 'https://spa.example.com/cb', '--introspect-for', api)).stderr)
      .toContain('only for confidential clients');
    expect((await fails('client', 'update', client.client_id, '--introspect-for', 'not a url')).stderr).toContain('introspect_for');
    expect((await usage('client', 'update', client.client_id, '--id-token-claims', 'some')).stderr).toContain('--id-token-claims must be full or minimal');
    expect((await usage('client', 'update', client.client_id, '--first-party', '--no-first-party')).stderr).toContain('use either');
    expect(await stored(client.client_id)).toMatchObject({ id_token_claims: 'full' });
  });

  test('the built-in account-console client cannot be updated, rotated or deleted', async () => {
    const before = await stored('account-console');
    for (const args of [['update', 'account-console', '--name', 'Mine now'], ['rotate-secret', 'account-console'], ['delete', 'account-console']]) {
      const result = await fails('client', ...args);
      expect(result).toMatchObject({ code: 1, stderr: 'error: "account-console" is built into the server and cannot be changed or deleted\n' });
    }
    expect(await stored('account-console')).toEqual(before);
    expect(await ok<Client>('client', 'show', 'account-console')).toMatchObject({ client_id: 'account-console', token_endpoint_auth_method: 'none' });
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
    // Apart by a few milliseconds on both sides: --since includes an event at the cutoff itself.
    await new Promise((resolve) => setTimeout(resolve, 5));
    const cutoff = new Date();
    await new Promise((resolve) => setTimeout(resolve, 5));
    await services.audit.record({ ...base, action: 'document.delete', outcome: 'success', actor: { sub: 'alice', clientId: 'c1' } });

    const lines = async (...args: string[]) => {
      const result = await cli('audit', 'tail', ...args);
      expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
      return result.stdout.trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, any>);
    };
    // The CLI's own changes above are in the trail too (actor operator:NAME); these are the documents'.
    const all = await lines('--action', 'document.');
    expect(all.map((e) => e.action)).toEqual(['document.create', 'document.read', 'document.delete']);
    expect(all[1]).toMatchObject({ outcome: 'denied', reason: 'not-found', actor: { sub: 'mallory', clientId: 'c2' }, ip: '127.0.0.1' });
    expect(new Date(all[0]!.at).toISOString()).toBe(all[0]!.at);
    expect((await lines('--actor', 'alice')).map((e) => e.action)).toEqual(['document.create', 'document.delete']);
    expect((await lines('--since', cutoff.toISOString())).map((e) => e.action)).toEqual(['document.delete']);
    expect((await lines('--limit', '1')).map((e) => e.action)).toEqual(['document.delete']);
    expect((await lines('--action', 'client.')).length).toBeGreaterThan(0);
  });

  test('bad arguments are usage errors', async () => {
    for (const args of [[], ['head'], ['tail', '--since', 'yesterday'], ['tail', '--limit', '0'], ['tail', '--actor', '{"$ne":1}']]) {
      const result = await fails('audit', ...args);
      expect(result.code).toBe(64);
      expect(result.stderr).toContain('usage: npm run -s audit -- <command>');
    }
  });
});
