/**
 * Dynamic client registration (RFC 7591) and its management (RFC 7592) over real HTTP: off by
 * default; on, only with an initial access token made by the admin CLI (a real child process),
 * spent exactly as many times as it allows, even by concurrent registrations on FerretDB; the
 * registered metadata passes the registry's own rules; a registered client signs in through
 * openid-client, and reads, updates and deletes itself with its registration access token.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as oidc from 'openid-client';
import type { StoredClient } from '../src/oidc/clients.ts';
import { Browser } from './support/browser.ts';
import { testRedisUrl } from './support/env.ts';
import { authorizationRequest, callbackUrl, exchangeCode, REDIRECT_URI, signIn } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

// CLI calls are fresh processes (a few seconds each on a busy machine).
jest.setTimeout(180_000);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const password = 'correct horse battery staple';

type Json = Record<string, any>;

async function cli(server: TestServer, ...args: string[]): Promise<Json> {
  const env = { ...process.env, MONGODB_URI: server.services.config.mongodbUri!, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error', NODE_ENV: 'test' };
  const { stdout, stderr } = await promisify(execFile)('node', ['scripts/client.ts', ...args], { cwd: root, env, timeout: 60_000 });
  expect(stderr).toBe('');
  return JSON.parse(stdout) as Json;
}

async function register(server: TestServer, metadata: Json, token?: string): Promise<{ status: number; body: Json; headers: Headers }> {
  const response = await fetch(`${server.issuer}/reg`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(metadata),
  });
  return { status: response.status, body: await response.json().catch(() => ({})) as Json, headers: response.headers };
}

const webApp = (name: string): Json => ({
  client_name: name, redirect_uris: [REDIRECT_URI], token_endpoint_auth_method: 'client_secret_post', scope: 'openid profile email',
});

async function clientsNamed(server: TestServer, name: string): Promise<number> {
  return (await server.services.clients.list()).filter((c) => c.client_name === name).length;
}

describe('off by default', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  test('discovery names no registration endpoint and /reg registers nothing', async () => {
    const discovery = await (await fetch(`${server.issuer}/.well-known/openid-configuration`)).json() as Json;
    expect(discovery).not.toHaveProperty('registration_endpoint');
    const { token } = await server.services.registration.create(server.services.provider, { createdBy: 'test' });
    const attempt = await register(server, webApp('Off'), token);
    expect(attempt.status).toBe(404);
    expect(await clientsNamed(server, 'Off')).toBe(0);
  });
});

describe('on (CLIENT_REGISTRATION_ENABLED)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ CLIENT_REGISTRATION_ENABLED: 'true' });
    await server.services.accounts.create({ email: 'reg@example.com', password, name: 'Reg', emailVerified: true });
  });
  afterAll(async () => {
    await server?.close();
  });

  const newToken = async (options: { uses?: number; expiresIn?: number } = {}) =>
    (await server.services.registration.create(server.services.provider, { createdBy: 'test', ...options })).token;

  test('discovery names the endpoint; without a token, or with an unknown one, registration is refused', async () => {
    const discovery = await (await fetch(`${server.issuer}/.well-known/openid-configuration`)).json() as Json;
    expect(discovery.registration_endpoint).toBe(`${server.issuer}/reg`);
    for (const token of [undefined, 'not-a-token', '0123456789abcdef.forged']) {
      const refused = await register(server, webApp('Anonymous'), token);
      expect(refused.status).toBe(401);
      expect(refused.body.error).toBe('invalid_token');
    }
    expect(await clientsNamed(server, 'Anonymous')).toBe(0);
  });

  test('a token from the CLI registers once, is listed with its use, and is refused after', async () => {
    const created = await cli(server, 'registration-token', 'create');
    expect(created).toMatchObject({ id: expect.stringMatching(/^[0-9a-f]{16}$/), uses: 1, used: 0, token: expect.stringMatching(/^[0-9a-f]{16}\./) });
    const first = await register(server, webApp('Once'), created.token);
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({ client_id: expect.stringMatching(/^[0-9a-f]{32}$/), client_secret: expect.any(String), client_secret_expires_at: 0 });
    const again = await register(server, webApp('Once'), created.token);
    expect(again.status).toBe(401);
    expect(await clientsNamed(server, 'Once')).toBe(1);
    const listed = await cli(server, 'registration-token', 'list') as unknown as Json[];
    expect(listed.find((t) => t.id === created.id)).toMatchObject({ uses: 1, used: 1 });
    expect(JSON.stringify(listed)).not.toContain(created.token);
  });

  test('a counted token registers N times, then is refused; a revoked one at once', async () => {
    const created = await cli(server, 'registration-token', 'create', '--uses', '3', '--expires-in', '600');
    for (let i = 0; i < 3; i++) expect((await register(server, webApp('Counted'), created.token)).status).toBe(201);
    expect((await register(server, webApp('Counted'), created.token)).status).toBe(401);
    expect(await clientsNamed(server, 'Counted')).toBe(3);

    const revoked = await cli(server, 'registration-token', 'create', '--uses', '5');
    expect(await cli(server, 'registration-token', 'revoke', revoked.id)).toEqual({ id: revoked.id, revoked: true });
    expect((await register(server, webApp('Revoked'), revoked.token)).status).toBe(401);
    expect(await clientsNamed(server, 'Revoked')).toBe(0);
  });

  test('an expired token is refused', async () => {
    const token = await newToken({ expiresIn: 1 });
    await sleep(2100);
    const refused = await register(server, webApp('Late'), token);
    expect(refused.status).toBe(401);
    expect(await clientsNamed(server, 'Late')).toBe(0);
  });

  test('10 concurrent registrations with a one-use token make exactly one client', async () => {
    const token = await newToken();
    const answers = await Promise.all(Array.from({ length: 10 }, () => register(server, webApp('Race'), token)));
    expect(answers.map((a) => a.status).sort()).toEqual([201, ...Array(9).fill(401)]);
    expect(await clientsNamed(server, 'Race')).toBe(1);
  });

  test('3 concurrent registrations with a two-use token make exactly two clients', async () => {
    const token = await newToken({ uses: 2 });
    const answers = await Promise.all(Array.from({ length: 3 }, () => register(server, webApp('Pair'), token)));
    expect(answers.filter((a) => a.status === 201)).toHaveLength(2);
    expect(await clientsNamed(server, 'Pair')).toBe(2);
  });

  test('the registry\'s rules apply, and a refused registration spends no use', async () => {
    const token = await newToken();
    const cases: [Json, string][] = [
      [{ redirect_uris: ['http://app.example.com/callback'] }, 'invalid_redirect_uri'],
      [{ scope: 'openid documents:admin' }, 'invalid_client_metadata'],
      [{ scope: 'openid no-such-scope' }, 'invalid_client_metadata'],
      [{ first_party: true }, 'invalid_client_metadata'],
      [{ introspect_for: [`${server.issuer}/api`] }, 'invalid_client_metadata'],
      [{ token_endpoint_auth_method: 'none', grant_types: ['client_credentials'], redirect_uris: [] }, 'invalid_client_metadata'],
      [{ response_types: ['code id_token'] }, 'invalid_client_metadata'],
      [{ grant_types: ['password'] }, 'invalid_client_metadata'],
    ];
    for (const [change, error] of cases) {
      const refused = await register(server, { ...webApp('Rules'), ...change }, token);
      expect({ change, status: refused.status, error: refused.body.error }).toEqual({ change, status: 400, error });
    }
    expect(await clientsNamed(server, 'Rules')).toBe(0);
    // Loopback http and https are fine; unknown metadata (logo_uri) is left out, not stored.
    const accepted = await register(server, { ...webApp('Rules'), redirect_uris: ['https://app.example.com/cb', REDIRECT_URI], logo_uri: 'https://app.example.com/logo.png' }, token);
    expect(accepted.status).toBe(201);
    const stored = await server.services.clients.require(accepted.body.client_id);
    expect(stored).not.toHaveProperty('logo_uri');
    expect(stored).not.toHaveProperty('first_party');
    expect(stored.redirect_uris).toEqual(['https://app.example.com/cb', REDIRECT_URI]);
  });

  test('a registered client signs in through openid-client', async () => {
    const config = await oidc.dynamicClientRegistration(new URL(server.issuer), webApp('Signs in'), undefined, {
      initialAccessToken: await newToken(), execute: [oidc.allowInsecureRequests],
    });
    const rp = { client: config.clientMetadata() as unknown as StoredClient, config };
    const request = await authorizationRequest(rp, { scope: 'openid email' });
    const callback = callbackUrl(await signIn(new Browser(), server, request.url, 'reg@example.com', password));
    const tokens = await exchangeCode(rp, request, callback);
    expect(tokens.claims()).toMatchObject({ email: 'reg@example.com', aud: config.clientMetadata().client_id });
  });

  test('RFC 7592: read, update and delete with the registration access token', async () => {
    const created = await register(server, webApp('Managed'), await newToken());
    const { registration_client_uri: uri, registration_access_token: firstToken, client_id: clientId } = created.body;
    expect(uri).toBe(`${server.issuer}/reg/${clientId}`);
    const manage = (method: string, token: string, body?: Json) => fetch(uri, {
      method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}),
    });

    const read = await manage('GET', firstToken);
    expect(read.status).toBe(200);
    const current = await read.json() as Json;
    expect(current).toMatchObject({ client_id: clientId, client_name: 'Managed' });

    // The whole record is sent back changed, as RFC 7592 section 2.2 asks.
    const { registration_access_token: _t, registration_client_uri: _u, client_secret_expires_at: _e, client_id_issued_at: _i, ...rest } = current;
    const updated = await manage('PUT', firstToken, { ...rest, client_name: 'Managed, renamed', scope: 'openid email' });
    expect(updated.status).toBe(200);
    const afterUpdate = await updated.json() as Json;
    expect(afterUpdate).toMatchObject({ client_name: 'Managed, renamed', scope: 'openid email', client_secret: created.body.client_secret });
    expect((await server.services.clients.require(clientId)).client_name).toBe('Managed, renamed');
    // The token was rotated by the update: the first one no longer works.
    const secondToken = afterUpdate.registration_access_token as string;
    expect(secondToken).not.toBe(firstToken);
    expect((await manage('GET', firstToken)).status).toBe(401);

    // An update is held to the same rules as a registration.
    const escalate = await manage('PUT', secondToken, { ...rest, scope: 'openid documents:admin' });
    expect(escalate.status).toBe(400);
    expect(((await escalate.json()) as Json).error).toBe('invalid_client_metadata');
    const firstParty = await manage('PUT', secondToken, { ...rest, first_party: true });
    expect(firstParty.status).toBe(400);

    expect((await manage('DELETE', secondToken)).status).toBe(204);
    expect(await server.services.clients.get(clientId)).toBeUndefined();
    expect((await manage('GET', secondToken)).status).toBe(401);
  });

  test('a registered client is marked as such: never PKCE-optional, left out of export and --prune', async () => {
    const { token } = await cli(server, 'registration-token', 'create');
    const refused = await register(server, { ...webApp('No PKCE'), pkce_required: false }, token as string);
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe('invalid_client_metadata');
    // Asking not to be marked changes nothing: the policy sets it.
    const created = await register(server, { ...webApp('Marked'), registered_dynamically: false }, token as string);
    expect(created.status).toBe(201);
    const stored = await server.services.clients.get(created.body.client_id as string);
    expect(stored?.registered_dynamically).toBe(true);
    const exported = await cli(server, 'export');
    expect((exported.clients as Json[]).map((c) => c.client_id)).not.toContain(created.body.client_id);
    const file = path.join(root, '.data', `clients-${Date.now()}.json`);
    const { mkdir, writeFile, rm } = await import('node:fs/promises');
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, JSON.stringify(exported));
    try {
      await cli(server, 'import', file, '--prune');
    } finally {
      await rm(file, { force: true });
    }
    expect(await server.services.clients.get(created.body.client_id as string)).toBeDefined();
  });
});
