/**
 * Every answer is a real one: styled pages (or problem+json for JSON clients) instead of bare
 * text for unknown paths and methods, 405s with Allow derived from the routes, the issuer's home
 * page, OAuth endpoints keeping their own errors, and documents API input that is refused (and
 * named) rather than stored altered. All through real HTTP against the real app.
 */
import http from 'node:http';
import net from 'node:net';
import * as oidc from 'openid-client';
import { createApp } from '../src/app.ts';
import { isValidEmail } from '../src/accounts/service.ts';
import { refuseConnect, refuseUnparsable } from '../src/http/methods.ts';
import { registerRelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

let server: TestServer;
let token: string;

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** node:http rather than fetch, which refuses to send TRACE and CONNECT. */
function rawRequest(base: string, method: string, path: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const request = http.request(new URL(path, base), { method, headers }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode!, headers: response.headers, body }));
    });
    request.on('error', reject);
    request.end();
  });
}

/** The status line and headers of whatever the server writes for a hand-written request. */
function rawSocket(base: string, requestText: string): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => socket.write(requestText));
    let text = '';
    socket.on('data', (chunk) => { text += chunk.toString('latin1'); });
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
}

const allowOf = (response: { headers: http.IncomingHttpHeaders | Headers }) =>
  (response.headers instanceof Headers ? response.headers.get('allow') : response.headers.allow as string | undefined) ?? null;

function expectStyledPage(html: string, title: string): void {
  expect(html).toMatch(/^<!doctype html>\s*<html lang="en">/);
  expect(html).toContain(`<title>${title}</title>`);
  // The shared layout: its nonce'd stylesheet and the card the content sits in.
  expect(html).toMatch(/<style nonce="[^"]+">/);
  expect(html).toContain('<div class="card">');
}

/** Response bodies in these tests are read loosely: the assertions say what they must hold. */
const json = (response: Response): Promise<any> => response.json();

const api = (path: string, init: RequestInit = {}) =>
  fetch(`${server.issuer}/api/v1${path}`, { ...init, headers: { authorization: `Bearer ${token}`, ...init.headers as Record<string, string> } });

beforeAll(async () => {
  server = await startTestServer();
  const machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'documents:read documents:write' });
  token = (await oidc.clientCredentialsGrant(machine.config, { scope: 'documents:read documents:write' })).access_token;
});

afterAll(async () => {
  await server?.close();
});

describe('pages', () => {
  test('an unknown path is a styled 404 page for browsers', async () => {
    const response = await fetch(`${server.issuer}/no/such/page`, { headers: { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' } });
    expect(response.status).toBe(404);
    expect(response.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await response.text();
    expectStyledPage(html, 'Not Found');
    expect(html).toContain('href="/"');
    // Without an Accept header too (curl, crawlers).
    const bare = await rawRequest(server.issuer, 'GET', '/no/such/page');
    expect(bare.status).toBe(404);
    expectStyledPage(bare.body, 'Not Found');
  });

  test('an unknown path is problem+json for clients that accept JSON', async () => {
    for (const accept of ['application/json', 'application/problem+json']) {
      const response = await fetch(`${server.issuer}/no/such/thing`, { headers: { accept } });
      expect([accept, response.status]).toEqual([accept, 404]);
      expect(response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(await json(response)).toMatchObject({ type: 'about:blank', title: 'Not Found', status: 404, detail: expect.any(String) });
    }
  });

  test('the issuer root is a home page with the account link and the discovery URL', async () => {
    const response = await fetch(`${server.issuer}/`);
    expect(response.status).toBe(200);
    const html = await response.text();
    expectStyledPage(html, 'Sign-in service');
    expect(html).toContain('href="/account"');
    expect(html).toContain(`${server.issuer}/.well-known/openid-configuration`);
    expect((await fetch(`${server.issuer}/`, { method: 'HEAD' })).status).toBe(200);
  });
});

describe('methods', () => {
  test('TRACE gets 405 with Allow on any path, before any handler runs', async () => {
    const cases: [string, string][] = [
      ['/', 'GET, HEAD, OPTIONS'],
      ['/no/such/page', 'GET, HEAD'],
      ['/token', 'POST, OPTIONS'],
      ['/healthz', 'GET, HEAD, OPTIONS'],
    ];
    for (const [path, allow] of cases) {
      const response = await rawRequest(server.issuer, 'TRACE', path, { accept: 'text/html' });
      expect([path, response.status, allowOf(response)]).toEqual([path, 405, allow]);
      expectStyledPage(response.body, 'Method Not Allowed');
    }
  });

  test('extension methods get 405 with the path\'s methods, as problem+json for JSON clients', async () => {
    for (const method of ['PROPFIND', 'PURGE', 'LINK']) {
      const response = await rawRequest(server.issuer, method, '/jwks', { accept: 'application/json' });
      expect([method, response.status, allowOf(response)]).toEqual([method, 405, 'GET, HEAD, OPTIONS']);
      expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(JSON.parse(response.body)).toMatchObject({ status: 405, title: 'Method Not Allowed' });
    }
  });

  test('a wrong method on a known path is 405 with Allow taken from the routes, ours and the provider\'s', async () => {
    const cases: [string, string, string[]][] = [
      ['GET', '/token', ['POST', 'OPTIONS']],
      ['DELETE', '/me', ['GET', 'HEAD', 'POST', 'OPTIONS']],
      ['POST', '/jwks', ['GET', 'HEAD', 'OPTIONS']],
      ['POST', '/.well-known/openid-configuration', ['GET', 'HEAD', 'OPTIONS']],
      ['PUT', '/auth', ['GET', 'HEAD']],
      ['DELETE', '/session/end', ['GET', 'HEAD']],
      ['DELETE', '/interaction/some-uid', ['GET', 'HEAD', 'OPTIONS']],
      ['PATCH', '/register', ['GET', 'HEAD', 'POST', 'OPTIONS']],
      ['POST', '/', ['GET', 'HEAD', 'OPTIONS']],
    ];
    for (const [method, path, allow] of cases) {
      const response = await fetch(`${server.issuer}${path}`, { method, headers: { accept: 'text/html' } });
      expect([method, path, response.status]).toEqual([method, path, 405]);
      const listed = (allowOf(response) ?? '').split(', ');
      expect([path, listed]).toEqual([path, expect.arrayContaining(allow)]);
      expect(listed).not.toContain(method);
      expectStyledPage(await response.text(), 'Method Not Allowed');
    }
    // Every method Allow lists for a provider path is really served there (no 405, no 404).
    for (const method of (allowOf(await fetch(`${server.issuer}/auth`, { method: 'PUT' })) ?? '').split(', ')) {
      const response = await fetch(`${server.issuer}/auth`, { method, redirect: 'manual' });
      expect([method, response.status]).not.toEqual([method, 405]);
      expect([method, response.status]).not.toEqual([method, 404]);
    }
  });

  test('OPTIONS on a known path answers its methods; on an unknown path it is 404', async () => {
    const known = await fetch(`${server.issuer}/auth`, { method: 'OPTIONS' });
    expect(known.status).toBe(204);
    expect(allowOf(known)).toContain('GET');
    expect((await fetch(`${server.issuer}/no/such/page`, { method: 'OPTIONS' })).status).toBe(404);
    const apiPath = await fetch(`${server.issuer}/api/v1/documents/01890a5d-ac96-774b-bcce-b302099a8057`, { method: 'OPTIONS' });
    expect([apiPath.status, allowOf(apiPath)]).toEqual([204, 'GET, HEAD, PATCH, DELETE, OPTIONS']);
  });

  test('the documents API answers wrong and unknown methods with 405, Allow and problem+json', async () => {
    const wrong = await api('/documents', { method: 'PUT' });
    expect(wrong.status).toBe(405);
    expect(allowOf(wrong)).toBe('GET, HEAD, POST, OPTIONS');
    expect(wrong.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await json(wrong)).toMatchObject({ type: 'tag:oidc-idp,2026:problems:method-not-allowed', status: 405 });

    const trace = await rawRequest(server.issuer, 'TRACE', '/api/v1/documents', { authorization: `Bearer ${token}` });
    expect(trace.status).toBe(405);
    expect(allowOf(trace)).toBe('GET, HEAD, POST, OPTIONS');
    expect(trace.headers['content-type']).toMatch(/^application\/problem\+json/);

    const onFile = await api('/documents/01890a5d-ac96-774b-bcce-b302099a8057/file', { method: 'POST' });
    expect(onFile.status).toBe(405);
    expect(allowOf(onFile)).toBe('GET, HEAD, PUT, OPTIONS');
    const metadata = await fetch(`${server.issuer}/.well-known/oauth-protected-resource/api`, { method: 'POST' });
    expect([metadata.status, allowOf(metadata)]).toEqual([405, 'GET, HEAD']);
  });

  test('CONNECT and method names the parser does not know get 405 and 501, never a dropped connection or 5xx', async () => {
    // The server wiring server.ts uses: the app's callback plus the two socket-level answers.
    const wired = http.createServer(createApp(server.services).callback());
    wired.on('connect', refuseConnect);
    wired.on('clientError', refuseUnparsable);
    await new Promise<void>((resolve) => wired.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(wired.address() as net.AddressInfo).port}`;
    try {
      const connect = await rawSocket(base, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
      expect(connect).toMatch(/^HTTP\/1\.1 405 Method Not Allowed\r\n/);
      expect(connect).toMatch(/\r\nAllow: GET, HEAD\r\n/);
      for (const method of ['FOO', 'BREW']) {
        const answer = await rawSocket(base, `${method} / HTTP/1.1\r\nHost: x\r\n\r\n`);
        expect(answer).toMatch(/^HTTP\/1\.1 501 Not Implemented\r\n/);
      }
      const garbage = await rawSocket(base, 'GET / HTTP/1.1\r\nBad Header\r\n\r\n');
      expect(garbage).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
      // The same app still answers ordinary requests.
      expect((await fetch(`${base}/no/such/page`)).status).toBe(404);
    } finally {
      await new Promise((resolve) => wired.close(resolve));
    }
  });
});

describe('protocol endpoints keep their own answers', () => {
  test('token, userinfo, discovery, JWKS and authorization errors are unchanged', async () => {
    const tokenError = await fetch(`${server.issuer}/token`, {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=authorization_code&code=x',
    });
    expect([400, 401]).toContain(tokenError.status);
    expect(tokenError.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await json(tokenError)).toMatchObject({ error: expect.stringMatching(/^invalid_/) });

    const userinfo = await fetch(`${server.issuer}/me`);
    expect([400, 401]).toContain(userinfo.status);
    expect(userinfo.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await json(userinfo)).toMatchObject({ error: expect.any(String) });

    const discovery = await fetch(`${server.issuer}/.well-known/openid-configuration`);
    expect(discovery.status).toBe(200);
    expect(await json(discovery)).toMatchObject({ issuer: server.issuer });
    const jwks = await fetch(`${server.issuer}/jwks`);
    expect(jwks.status).toBe(200);
    expect((await json(jwks)).keys.length).toBeGreaterThan(0);

    // No client_id: oidc-provider's renderError page, with its OAuth error code.
    const authorization = await fetch(`${server.issuer}/auth?response_type=code`);
    expect(authorization.status).toBe(400);
    const page = await authorization.text();
    expectStyledPage(page, 'Something went wrong');
    expect(page).toContain('invalid_request');
  });
});

describe('documents API input is refused and named, never stored altered', () => {
  const post = (text: string | Buffer) => api('/documents', { method: 'POST', headers: { 'content-type': 'application/json' }, body: text });

  test('a lone surrogate in the title is a 400 naming /title', async () => {
    const before = await server.services.connection.collection('documents').countDocuments();
    for (const body of ['{"title":"broken \\ud800 text"}', '{"title":"\\udc00"}']) {
      const response = await post(body);
      expect([body, response.status]).toEqual([body, 400]);
      const problem = await json(response);
      expect(problem.errors).toEqual([expect.objectContaining({ pointer: '/title' })]);
      expect(problem.detail).toContain('/title');
    }
    const inTags = await json(await post('{"title":"ok","tags":["fine","\\ud83d"]}'));
    expect(inTags.errors).toEqual([expect.objectContaining({ pointer: '/tags/1' })]);
    // Bytes that are not UTF-8 (an encoded surrogate) are refused, not turned into U+FFFD.
    const bytes = Buffer.concat([Buffer.from('{"title":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}')]);
    const invalid = await post(bytes);
    expect(invalid.status).toBe(400);
    expect((await json(invalid)).errors).toEqual([expect.objectContaining({ pointer: '' })]);
    expect(await server.services.connection.collection('documents').countDocuments()).toBe(before);

    // A real astral character round-trips, and counts as one character of the 200.
    const emoji = '\u{1F600}'.repeat(200);
    const created = await post(JSON.stringify({ title: emoji, content: 'caf\u00e9 \u{1F600}' }));
    expect(created.status).toBe(201);
    const doc = await json(created);
    expect(await json(await api(`/documents/${doc.id}`))).toMatchObject({ title: emoji, content: 'caf\u00e9 \u{1F600}' });
  });

  test('bad query and path parameters are 400s naming the parameter', async () => {
    const cases: [string, string][] = [
      ['/documents?limit=abc', 'limit'],
      ['/documents?q=%ED%A0%80', 'q'],
      ['/documents?tag=%FF', 'tag'],
      ['/documents?sort=title', 'sort'],
      ['/documents/not-an-id', 'id'],
      ['/documents/01890a5d-ac96-774b-bcce-b302099a8057/shares/nope', 'userId'],
    ];
    for (const [path, parameter] of cases) {
      const method = path.includes('/shares/') ? 'DELETE' : 'GET';
      const response = await api(path, { method });
      expect([path, response.status]).toEqual([path, 400]);
      const problem = await json(response);
      expect([path, problem.errors]).toEqual([path, [expect.objectContaining({ parameter })]]);
      expect(problem.detail).toContain(parameter);
    }
  });

  test('the contract states the rules: UUIDv7 ids, text patterns and the email rule of accounts', async () => {
    const spec = await json(await fetch(`${server.issuer}/api/openapi.json`));
    const { schemas, parameters } = spec.components;
    const id = new RegExp(parameters.DocumentId.schema.pattern, 'u');
    expect(id.test('01890a5d-ac96-774b-bcce-b302099a8057')).toBe(true);
    expect(id.test('6f1c1f7e-2a7b-4b8e-9d3c-1a2b3c4d5e6f')).toBe(false); // a UUIDv4

    const title = new RegExp(schemas.DocumentCreate.properties.title.pattern, 'u');
    for (const [text, ok] of [['Plan', true], ['   ', false], ['a\u0007b', false], ['a\tb', false], ['x\ud800', false]] as const) {
      expect([text, title.test(text)]).toEqual([text, ok]);
    }
    const tag = new RegExp(schemas.DocumentCreate.properties.tags.items.pattern, 'u');
    expect([tag.test('work'), tag.test('a\nb')]).toEqual([true, false]);

    const email = schemas.ShareCreate.properties.email;
    expect(email.maxLength).toBe(254);
    const pattern = new RegExp(email.pattern, 'u');
    const samples = [
      'ada@example.com', 'Ada.Lovelace+docs@Mail.Example.org', 'a@b.co', `${'x'.repeat(64)}@example.com`, `${'x'.repeat(65)}@example.com`,
      ' ada@example.com', 'ada@example', 'a@b.c', 'a,b@example.com', 'z<b@y.com>', 'a..b@example.com', 'a@-x.com', 'a@x-.com',
      '"quoted"@example.com', 'ada@example.com,bob@example.com', 'ada@@example.com', 'é@example.com',
    ];
    for (const sample of samples) expect([sample, pattern.test(sample)]).toEqual([sample, isValidEmail(sample)]);

    // Shares are validated with the same rule: surrounding spaces are not trimmed away.
    const doc = await json(await post('{"title":"Shared"}'));
    const spaced = await api(`/documents/${doc.id}/shares`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: ' ada@example.com', role: 'viewer' }),
    });
    expect(spaced.status).toBe(400);
    expect((await json(spaced)).errors).toEqual([expect.objectContaining({ pointer: '/email' })]);
  });
});
