/**
 * The documents API end to end: real users sign in through the hosted pages with openid-client,
 * get JWT access tokens for the API, and use it over real HTTP against FerretDB/MongoDB and
 * GridFS. Every API response is validated against the served OpenAPI document (support/api.ts).
 */
import { Validator } from '@seriousme/openapi-schema-validator';
import { decodeJwt, decodeProtectedHeader, importJWK, SignJWT, type JWK } from 'jose';
import * as oidc from 'openid-client';
import { ApiClient } from './support/api.ts';
import { Browser } from './support/browser.ts';
import { authorizationRequest, callbackUrl, exchangeCode, registerRelyingParty, signIn, type RelyingParty } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { TokenRevocations } from '../src/oidc/revocations.ts';
import { AccessTokenVerifier } from '../src/documents/token.ts';
import { createLogger } from '../src/observability/logger.ts';

const MAX_FILE_BYTES = 64 * 1024;
const APP_ORIGIN = 'http://app.example.test';
const password = 'correct horse battery staple';

let server: TestServer;
let api: ApiClient;
let rp: RelyingParty;
let audience: string;
const users: Record<'ada' | 'bob' | 'root', { id: string; email: string; token: string }> = {} as never;

interface Doc {
  id: string;
  title: string;
  content: string;
  tags: string[];
  access: string;
  version: number;
  owner: { type: string; id: string };
  file: null | { contentType: string; size: number; filename: string; sha256: string };
}

/** Signs in through the real pages and returns the token response. */
async function signInFor(email: string, scope: string, client: RelyingParty = rp) {
  const request = await authorizationRequest(client, { scope });
  const callback = callbackUrl(await signIn(new Browser(), server, request.url, email, password));
  return exchangeCode(client, request, callback);
}

async function clientCredentialsToken(client: RelyingParty, scope: string): Promise<oidc.TokenEndpointResponse> {
  return oidc.clientCredentialsGrant(client.config, { scope });
}

const problemOf = (response: { headers: Headers; body: { type: string; status: number } }) => ({
  type: response.body.type.split(':').at(-1),
  status: response.body.status,
  contentType: response.headers.get('content-type'),
});

async function createDoc(token: string, input: Record<string, unknown>): Promise<Doc> {
  const created = await api.request<Doc>('POST', '/documents', { token, json: input });
  expect(created.status).toBe(201);
  return created.body;
}

beforeAll(async () => {
  server = await startTestServer({
    DOCUMENTS_MAX_FILE_BYTES: String(MAX_FILE_BYTES),
    DOCUMENTS_API_CORS_ORIGINS: APP_ORIGIN,
    REVOCATION_REFRESH_SECONDS: '1',
  });
  audience = server.services.config.documents.audience;
  api = await ApiClient.connect(server);
  rp = await registerRelyingParty(server, { scope: 'openid profile email offline_access documents:read documents:write documents:admin' });
  for (const [name, roles] of [['ada', []], ['bob', []], ['root', ['admin']]] as const) {
    const email = `${name}@example.com`;
    const account = await server.services.accounts.create({ email, password, name, emailVerified: true, roles: [...roles] });
    const tokens = await signInFor(email, 'openid profile email documents:read documents:write documents:admin');
    users[name] = { id: account.id, email, token: tokens.access_token };
  }
});

afterAll(async () => {
  await server?.close();
});

describe('tokens for the API', () => {
  test('a plain OIDC sign-in asking for documents scopes gets an RFC 9068 JWT for the API, and the ID token keeps the profile', async () => {
    const tokens = await signInFor(users.ada.email, 'openid profile email documents:read documents:write');
    expect(decodeProtectedHeader(tokens.access_token)).toMatchObject({ typ: 'at+jwt', alg: 'ES256' });
    const claims = decodeJwt(tokens.access_token);
    expect(claims).toMatchObject({ iss: server.issuer, aud: audience, sub: users.ada.id, client_id: rp.client.client_id });
    expect(String(claims.scope).split(' ').sort()).toEqual(['documents:read', 'documents:write']);
    for (const claim of ['exp', 'iat', 'jti']) expect(claims).toHaveProperty(claim);
    // The access token is not usable at userinfo, so the ID token carries the requested claims.
    expect(tokens.claims()).toMatchObject({ sub: users.ada.id, email: users.ada.email, name: 'ada' });
  });

  test('documents:admin is only granted to accounts with the admin role, whatever is asked for', async () => {
    expect(String(decodeJwt(users.root.token).scope).split(' ')).toContain('documents:admin');
    expect(String(decodeJwt(users.ada.token).scope).split(' ')).not.toContain('documents:admin');
    expect(String(decodeJwt(users.ada.token).scope).split(' ')).toContain('documents:write');

    const machine = await registerRelyingParty(server, {
      grantTypes: ['client_credentials'], scope: 'documents:read documents:write documents:admin',
    });
    const token = await clientCredentialsToken(machine, 'documents:read documents:write documents:admin');
    expect(decodeJwt(token.access_token)).toMatchObject({ sub: machine.client.client_id, aud: audience, scope: 'documents:read documents:write' });
  });

  test('a client not registered for the API cannot get a token for it', async () => {
    const plain = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'openid' });
    await expect(clientCredentialsToken(plain, 'documents:read')).rejects.toMatchObject({ error: 'invalid_target' });
  });

  test('verification uses the cached key set: no call to the provider per request', async () => {
    await api.request('GET', '/documents', { token: users.ada.token });
    const before = server.services.tokenVerifier.keySetFetches;
    for (let i = 0; i < 20; i += 1) expect((await api.request('GET', '/documents', { token: users.ada.token })).status).toBe(200);
    expect(server.services.tokenVerifier.keySetFetches - before).toBe(0);
    expect(server.services.tokenVerifier.keySetFetches).toBe(1);
  });
});

describe('rejected tokens answer 401 invalid_token', () => {
  let signingKey: JWK;
  const claims = () => ({
    iss: server.issuer, aud: audience, sub: users.ada.id, client_id: rp.client.client_id, scope: 'documents:read', jti: 'j1',
  });

  beforeAll(async () => {
    const jwks = await server.services.keyRing!.privateJwks();
    signingKey = jwks!.keys.find((k) => k.alg === 'ES256' && !k.key_ops) as JWK;
  });

  async function forge(payload: Record<string, unknown>, header: Record<string, unknown> = {}, expiresIn: string | number = '5m') {
    const key = await importJWK(signingKey, 'ES256');
    return new SignJWT(payload).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: signingKey.kid, ...header })
      .setIssuedAt().setExpirationTime(expiresIn).sign(key);
  }

  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

  async function expectRejected(token: string | undefined, error: 'invalid_token' | null = 'invalid_token') {
    const response = await api.request('GET', '/documents', token === undefined ? {} : { token });
    expect(response.status).toBe(401);
    expect(problemOf(response)).toEqual({ type: 'invalid-token', status: 401, contentType: 'application/problem+json' });
    const challenge = response.headers.get('www-authenticate') ?? '';
    expect(challenge.startsWith('Bearer ')).toBe(true);
    if (error) expect(challenge).toContain(`error="${error}"`);
    else expect(challenge).not.toContain('error=');
    if (token) expect(JSON.stringify(response.body)).not.toContain(token);
  }

  test('a correctly forged control token is accepted (so the rejections below are about one defect each)', async () => {
    expect((await api.request('GET', '/documents', { token: await forge(claims()) })).status).toBe(200);
  });

  test('no token, or not a Bearer token', async () => {
    await expectRejected(undefined, null);
    // Another scheme is not a bad token (RFC 6750 3.1): the challenge alone.
    const basic = await api.request('GET', '/documents', { headers: { authorization: 'Basic YTpi' } });
    expect(basic.status).toBe(401);
    expect(basic.headers.get('www-authenticate')).toBe('Bearer realm="documents"');
    await expectRejected('not.a.jwt');
    // The scheme name is case-insensitive (RFC 9110).
    expect((await api.request('GET', '/documents', { headers: { authorization: `bearer ${users.ada.token}` } })).status).toBe(200);
  });

  test('when the key set cannot be fetched the answer is 503, not a rejected token', async () => {
    const verifier = new AccessTokenVerifier({
      issuer: server.issuer, audience, jwksUri: 'http://127.0.0.1:9/jwks',
      revocations: server.services.revocations, logger: createLogger('silent'),
    });
    await expect(verifier.verify(users.ada.token)).rejects.toMatchObject({ status: 503, code: 'server-error' });
  });

  test('paths the API does not have are not written to the audit trail', async () => {
    const before = (await server.services.audit.tail({ limit: 1000 })).length;
    expect((await fetch(`${api.base}/no-such-thing`, { headers: { authorization: 'Bearer x' } })).status).toBe(404);
    expect((await server.services.audit.tail({ limit: 1000 })).length).toBe(before);
  });

  test('wrong audience, wrong issuer, expired, not yet valid, wrong typ', async () => {
    await expectRejected(await forge({ ...claims(), aud: 'https://other.example/api' }));
    await expectRejected(await forge({ ...claims(), iss: 'https://evil.example' }));
    await expectRejected(await forge(claims(), {}, Math.floor(Date.now() / 1000) - 60));
    await expectRejected(await forge({ ...claims(), nbf: Math.floor(Date.now() / 1000) + 600 }));
    await expectRejected(await forge(claims(), { typ: 'JWT' }));
    await expectRejected(await forge({ ...claims(), client_id: undefined }));
  });

  test('a bad signature, alg none, and HS256 keyed with the public key', async () => {
    const valid = await forge(claims());
    const [header, payload, signature] = valid.split('.');
    const flipped = `${signature!.slice(0, 10)}${signature![10] === 'A' ? 'B' : 'A'}${signature!.slice(11)}`;
    await expectRejected(`${header}.${payload}.${flipped}`);
    await expectRejected(`${b64({ alg: 'none', typ: 'at+jwt' })}.${payload}.`);

    const { d: _private, ...publicJwk } = signingKey;
    const hmacKey = new TextEncoder().encode(JSON.stringify(publicJwk));
    const confused = await new SignJWT(claims()).setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: signingKey.kid })
      .setIssuedAt().setExpirationTime('5m').sign(hmacKey);
    await expectRejected(confused);
  });

  test('tokens issued for another resource: the userinfo access token and the ID token', async () => {
    const tokens = await signInFor(users.ada.email, 'openid profile');
    expect(tokens.access_token.split('.')).toHaveLength(1); // opaque, for the provider's own userinfo
    await expectRejected(tokens.access_token);
    await expectRejected(tokens.id_token!);
  });

  test('refusals are audited without the token', async () => {
    const token = await forge({ ...claims(), aud: 'https://other.example/api' });
    await api.request('GET', '/documents', { token });
    const events = await server.services.audit.tail({ limit: 500 });
    const denied = events.filter((e) => e.outcome === 'denied' && e.reason === 'invalid-token');
    expect(denied.length).toBeGreaterThan(0);
    expect(denied.at(-1)).toMatchObject({ action: 'document.list', actor: { sub: null, clientId: null } });
    expect(JSON.stringify(events)).not.toContain(token);
  });
});

describe('documents', () => {
  test('create, list, read, conditional update, file upload and download, then delete', async () => {
    const { token } = users.ada;
    const created = await api.request<Doc>('POST', '/documents', {
      token, json: { title: 'Notes on the Analytical Engine', content: 'It weaves algebraic patterns.', tags: ['math', 'history'] },
    });
    expect(created.status).toBe(201);
    const doc = created.body;
    expect(doc).toMatchObject({ title: 'Notes on the Analytical Engine', access: 'owner', version: 1, owner: { type: 'user', id: users.ada.id }, file: null });
    expect(created.headers.get('location')).toBe(`/api/v1/documents/${doc.id}`);
    const etag1 = created.headers.get('etag')!;

    const listed = await api.request<{ items: Doc[] }>('GET', '/documents', { token });
    expect(listed.body.items[0]).toMatchObject({ id: doc.id, title: doc.title });
    expect(listed.body.items[0]).not.toHaveProperty('content');
    expect((await api.request('GET', '/documents?tag=math', { token })).body.items.map((d: Doc) => d.id)).toContain(doc.id);
    expect((await api.request('GET', '/documents?tag=none', { token })).body.items.map((d: Doc) => d.id)).not.toContain(doc.id);
    expect((await api.request('GET', '/documents?q=analytical%20ENGINE', { token })).body.items.map((d: Doc) => d.id)).toEqual([doc.id]);
    expect((await api.request('GET', '/documents?q=.%2A', { token })).body.items).toEqual([]); // q is text, not a pattern

    const read = await api.request<Doc>('GET', `/documents/${doc.id}`, { token });
    expect(read.status).toBe(200);
    expect(read.body.content).toBe('It weaves algebraic patterns.');
    expect(read.headers.get('etag')).toBe(etag1);
    expect((await api.request('GET', `/documents/${doc.id}`, { token, headers: { 'if-none-match': etag1 } })).status).toBe(304);

    const updated = await api.request<Doc>('PATCH', `/documents/${doc.id}`, { token, json: { title: 'Notes, revised' }, headers: { 'if-match': etag1 } });
    expect(updated.status).toBe(200);
    expect(updated.body).toMatchObject({ title: 'Notes, revised', content: 'It weaves algebraic patterns.', version: 2 });
    const etag2 = updated.headers.get('etag')!;
    expect(etag2).not.toBe(etag1);

    const stale = await api.request('PATCH', `/documents/${doc.id}`, { token, json: { title: 'Lost update' }, headers: { 'if-match': etag1 } });
    expect(stale.status).toBe(412);
    expect(problemOf(stale).type).toBe('precondition-failed');
    expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token })).body.title).toBe('Notes, revised');

    const unconditional = await api.request<Doc>('PATCH', `/documents/${doc.id}`, { token, json: { tags: ['math'] } });
    expect(unconditional.body).toMatchObject({ title: 'Notes, revised', tags: ['math'], version: 3 });

    const bytes = Buffer.from('Ada’s notes\nline two\n', 'utf8');
    const uploaded = await api.request<Doc>('PUT', `/documents/${doc.id}/file?filename=${encodeURIComponent('notes “final”.txt')}`, {
      token, body: bytes, headers: { 'content-type': 'text/plain; charset=utf-8' },
    });
    expect(uploaded.status).toBe(200);
    expect(uploaded.body.file).toMatchObject({ contentType: 'text/plain; charset=utf-8', size: bytes.length, filename: 'notes “final”.txt' });

    const download = await api.request('GET', `/documents/${doc.id}/file`, { token });
    expect(download.status).toBe(200);
    expect(download.bytes.equals(bytes)).toBe(true);
    expect(download.headers.get('content-type')).toBe('text/plain; charset=utf-8');
    expect(download.headers.get('content-length')).toBe(String(bytes.length));
    expect(download.headers.get('x-content-type-options')).toBe('nosniff');
    expect(download.headers.get('content-disposition')).toBe(`attachment; filename="notes _final_.txt"; filename*=UTF-8''${encodeURIComponent('notes “final”.txt')}`);
    expect(download.headers.get('repr-digest')).toBe(`sha-256=:${uploaded.body.file!.sha256}:`);

    // Replacing the file keeps exactly one stored file for the document.
    const png = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.alloc(1000, 7)]);
    const replaced = await api.request<Doc>('PUT', `/documents/${doc.id}/file`, { token, body: png, headers: { 'content-type': 'image/png' } });
    expect(replaced.body.file).toMatchObject({ contentType: 'image/png', size: png.length, filename: `document-${doc.id}` });
    expect((await api.request('GET', `/documents/${doc.id}/file`, { token })).bytes.equals(png)).toBe(true);
    const files = server.services.connection.collection('document_files.files');
    expect(await files.countDocuments({ 'metadata.documentId': doc.id })).toBe(1);

    const deleted = await api.request('DELETE', `/documents/${doc.id}`, { token });
    expect(deleted.status).toBe(204);
    expect((await api.request('GET', `/documents/${doc.id}`, { token })).status).toBe(404);
    expect((await api.request('GET', `/documents/${doc.id}/file`, { token })).status).toBe(404);
    expect(await files.countDocuments({ 'metadata.documentId': doc.id })).toBe(0);
    const liveFiles = (await files.find({}, { projection: { _id: 1 } }).toArray()).map((f) => f._id);
    expect(await server.services.connection.collection('document_files.chunks').countDocuments({ files_id: { $nin: liveFiles } })).toBe(0);

    const audit = (await server.services.audit.tail({ actor: users.ada.id, limit: 100 })).filter((e) => e.target === doc.id);
    expect(audit.map((e) => `${e.action}:${e.outcome}`)).toEqual([
      'document.create:success', 'document.update:success', 'document.update:success',
      'document.file.upload:success', 'document.file.upload:success', 'document.delete:success',
      // Reading it after deletion: refused accesses are recorded too.
      'document.read:denied', 'document.file.download:denied',
    ]);
    expect(audit[0]).toMatchObject({ actor: { sub: users.ada.id, clientId: rp.client.client_id }, ip: expect.any(String), requestId: expect.any(String) });
    expect(JSON.stringify(audit)).not.toContain('algebraic');
  });

  test('files: type allow-list (415), size limit (413), and neither changes the stored file', async () => {
    const { token } = users.ada;
    const doc = await createDoc(token, { title: 'With a file' });
    const first = await api.request<Doc>('PUT', `/documents/${doc.id}/file`, { token, body: 'hello', headers: { 'content-type': 'text/plain' } });
    expect(first.status).toBe(200);

    for (const type of ['text/html', 'image/svg+xml', 'application/octet-stream']) {
      const refused = await api.request('PUT', `/documents/${doc.id}/file`, { token, body: '<script>alert(1)</script>', headers: { 'content-type': type } });
      expect(refused.status).toBe(415);
    }
    const tooBig = await api.request('PUT', `/documents/${doc.id}/file`, {
      token, body: Buffer.alloc(MAX_FILE_BYTES + 1, 1), headers: { 'content-type': 'application/pdf' },
    });
    expect(tooBig.status).toBe(413);
    // Without a Content-Length the server counts while streaming and stops at the limit.
    const chunks = new ReadableStream({
      start(controller) {
        for (let i = 0; i < 5; i += 1) controller.enqueue(new Uint8Array(MAX_FILE_BYTES / 2));
        controller.close();
      },
    });
    const streamed = await fetch(`${api.base}/documents/${doc.id}/file`, {
      method: 'PUT', body: chunks, duplex: 'half', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/pdf' },
    } as RequestInit);
    expect(streamed.status).toBe(413);
    expect(streamed.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const exactly = await api.request('PUT', `/documents/${doc.id}/file`, { token, body: Buffer.alloc(MAX_FILE_BYTES, 2), headers: { 'content-type': 'application/pdf' } });
    expect(exactly.status).toBe(200);

    const current = await api.request<Doc>('GET', `/documents/${doc.id}`, { token });
    expect(current.body.file).toMatchObject({ contentType: 'application/pdf', size: MAX_FILE_BYTES });
    const files = server.services.connection.collection('document_files.files');
    expect(await files.countDocuments({ 'metadata.documentId': doc.id })).toBe(1);
  });

  test('pagination: newest first, limit and cursor, no duplicates or gaps', async () => {
    const machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'documents:read documents:write' });
    const token = (await clientCredentialsToken(machine, 'documents:read documents:write')).access_token;
    const ids: string[] = [];
    for (let i = 0; i < 7; i += 1) ids.push((await createDoc(token, { title: `Page item ${i}` })).id);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const query: string = cursor ? `?limit=3&cursor=${cursor}` : '?limit=3';
      const page = await api.request<{ items: Doc[]; nextCursor: string | null }>('GET', `/documents${query}`, { token });
      expect(page.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...page.body.items.map((d) => d.id));
      cursor = page.body.nextCursor;
    } while (cursor);
    expect(seen).toEqual([...ids].reverse());
    const defaults = await api.request<{ items: Doc[]; nextCursor: string | null }>('GET', '/documents', { token });
    expect(defaults.body).toMatchObject({ nextCursor: null });
    expect(defaults.body.items).toHaveLength(7);
  });

  test('client_credentials tokens reach only documents owned by that client', async () => {
    const machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'documents:read documents:write' });
    const token = (await clientCredentialsToken(machine, 'documents:read documents:write')).access_token;
    const own = await createDoc(token, { title: 'Machine report' });
    expect(own.owner).toEqual({ type: 'client', id: machine.client.client_id });
    expect((await api.request('GET', `/documents/${own.id}`, { token })).status).toBe(200);

    const adas = await createDoc(users.ada.token, { title: 'Private to Ada' });
    expect((await api.request('GET', `/documents/${adas.id}`, { token })).status).toBe(404);
    expect((await api.request('PATCH', `/documents/${adas.id}`, { token, json: { title: 'x' } })).status).toBe(404);
    const listed = await api.request<{ items: Doc[] }>('GET', '/documents', { token });
    expect(listed.body.items.map((d) => d.id)).toEqual([own.id]);
    // Ada does not see the client's document either.
    expect((await api.request('GET', `/documents/${own.id}`, { token: users.ada.token })).status).toBe(404);
  });

  test('an admin sees and manages every document; nobody else does', async () => {
    const adas = await createDoc(users.ada.token, { title: 'Ada only' });
    expect((await api.request('GET', `/documents/${adas.id}`, { token: users.bob.token })).status).toBe(404);
    const asAdmin = await api.request<Doc>('GET', `/documents/${adas.id}`, { token: users.root.token });
    expect(asAdmin.body.access).toBe('admin');
    const all = await api.request<{ items: Doc[] }>('GET', '/documents?limit=100', { token: users.root.token });
    expect(all.body.items.map((d) => d.id)).toContain(adas.id);
    expect((await api.request('PATCH', `/documents/${adas.id}`, { token: users.root.token, json: { tags: ['reviewed'] } })).status).toBe(200);
  });
});

describe('sharing', () => {
  test('viewer reads only; editor updates; only the owner manages shares; removal revokes', async () => {
    const ada = users.ada.token;
    const bob = users.bob.token;
    const doc = await createDoc(ada, { title: 'Shared plan', content: 'v1' });
    const hidden = await api.request('GET', `/documents/${doc.id}`, { token: bob });
    const missing = await api.request('GET', '/documents/0190a5c2-7b1e-7c3d-8e4f-1234567890ab', { token: bob });
    expect(hidden.status).toBe(404);
    expect(hidden.body).toEqual(missing.body); // existence is not revealed

    const share = await api.request('POST', `/documents/${doc.id}/shares`, { token: ada, json: { email: 'BOB@example.com', role: 'viewer' } });
    expect(share.status).toBe(201);
    expect(share.body).toMatchObject({ userId: users.bob.id, email: 'bob@example.com', role: 'viewer' });
    expect(share.headers.get('location')).toBe(`/api/v1/documents/${doc.id}/shares/${users.bob.id}`);

    expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token: bob })).body).toMatchObject({ access: 'viewer', content: 'v1' });
    expect((await api.request<{ items: Doc[] }>('GET', '/documents', { token: bob })).body.items.map((d) => d.id)).toContain(doc.id);
    for (const [method, path, json] of [
      ['PATCH', `/documents/${doc.id}`, { content: 'bob was here' }],
      ['DELETE', `/documents/${doc.id}`, undefined],
      ['POST', `/documents/${doc.id}/shares`, { email: 'root@example.com', role: 'editor' }],
      ['GET', `/documents/${doc.id}/shares`, undefined],
    ] as const) {
      const refused = await api.request(method, path, { token: bob, ...(json ? { json } : {}) });
      expect([method, refused.status, problemOf(refused).type]).toEqual([method, 403, 'forbidden']);
    }
    // Unchanged by Bob's attempts (version 2 is Ada's share).
    expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token: ada })).body).toMatchObject({ content: 'v1', version: 2 });

    const roleChange = await api.request('POST', `/documents/${doc.id}/shares`, { token: ada, json: { email: 'bob@example.com', role: 'editor' } });
    expect([roleChange.status, roleChange.body.role, roleChange.headers.get('location')]).toEqual([200, 'editor', null]);
    const edited = await api.request<Doc>('PATCH', `/documents/${doc.id}`, { token: bob, json: { content: 'v2 by bob' } });
    expect(edited.body).toMatchObject({ access: 'editor', content: 'v2 by bob' });
    const listedShares = await api.request('GET', `/documents/${doc.id}/shares`, { token: ada });
    expect(listedShares.body.items).toEqual([expect.objectContaining({ userId: users.bob.id, role: 'editor' })]);

    const ownShare = await api.request('POST', `/documents/${doc.id}/shares`, { token: ada, json: { email: users.ada.email, role: 'viewer' } });
    expect(ownShare.status).toBe(400);

    expect((await api.request('DELETE', `/documents/${doc.id}/shares/${users.bob.id}`, { token: ada })).status).toBe(204);
    expect((await api.request('GET', `/documents/${doc.id}`, { token: bob })).status).toBe(404);
    expect((await api.request('DELETE', `/documents/${doc.id}/shares/${users.bob.id}`, { token: ada })).status).toBe(404);

    const denials = (await server.services.audit.tail({ actor: users.bob.id, limit: 100 })).filter((e) => e.target === doc.id && e.outcome === 'denied');
    expect(denials.map((e) => `${e.action}:${e.reason}`)).toEqual(expect.arrayContaining([
      'document.read:not-found', 'document.update:forbidden', 'document.delete:forbidden', 'document.share.add:forbidden',
    ]));
  });

  test('sharing with an email that has no account answers like any share, and works once the account exists', async () => {
    const doc = await createDoc(users.ada.token, { title: 'For a newcomer' });
    const pending = await api.request('POST', `/documents/${doc.id}/shares`, { token: users.ada.token, json: { email: 'newcomer@example.com', role: 'viewer' } });
    expect(pending.status).toBe(201);
    expect(Object.keys(pending.body).sort()).toEqual(['createdAt', 'email', 'role', 'userId']);
    // Like an account's id, the placeholder is the same on every document, so comparing answers
    // for two documents does not tell an account from no account.
    const other = await createDoc(users.bob.token, { title: 'Also for a newcomer' });
    const again = await api.request('POST', `/documents/${other.id}/shares`, { token: users.bob.token, json: { email: 'NEWCOMER@example.com', role: 'editor' } });
    expect(again.body.userId).toBe(pending.body.userId);

    const account = await server.services.accounts.create({ email: 'newcomer@example.com', password, emailVerified: true });
    const token = (await signInFor('newcomer@example.com', 'openid documents:read')).access_token;
    expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token })).body.access).toBe('viewer');
    const shares = await api.request('GET', `/documents/${doc.id}/shares`, { token: users.ada.token });
    expect(shares.body.items).toEqual([expect.objectContaining({ userId: account.id, email: 'newcomer@example.com' })]);
    expect((await api.request<Doc>('GET', `/documents/${other.id}`, { token })).body.access).toBe('editor');
    // Removing it works by the id the owner now sees.
    expect((await api.request('DELETE', `/documents/${doc.id}/shares/${account.id}`, { token: users.ada.token })).status).toBe(204);
    expect((await api.request('GET', `/documents/${doc.id}`, { token })).status).toBe(404);
  });
});

describe('revoking JWT access tokens', () => {
  const nextSecond = () => new Promise((resolve) => setTimeout(resolve, 1000 - (Date.now() % 1000) + 5));

  test('disabling an account stops its access tokens at once; a fresh sign-in after re-enabling works', async () => {
    const account = await server.services.accounts.create({ email: 'eve@example.com', password, emailVerified: true });
    const token = (await signInFor('eve@example.com', 'openid documents:read')).access_token;
    expect((await api.request('GET', '/documents', { token })).status).toBe(200);

    await server.services.accounts.setDisabled(account.id, true);
    const refused = await api.request('GET', '/documents', { token });
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toContain('error="invalid_token"');
    expect(refused.body.detail).toContain('revoked');

    await server.services.accounts.setDisabled(account.id, false);
    await nextSecond(); // token times have one-second resolution; the revocation covers its own second
    const fresh = (await signInFor('eve@example.com', 'openid documents:read')).access_token;
    expect((await api.request('GET', '/documents', { token: fresh })).status).toBe(200);
    expect((await api.request('GET', '/documents', { token })).status).toBe(401);
  });

  test("a client's tokens die when its secret is rotated or it is deleted, also by another process", async () => {
    const rotated = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'documents:read' });
    const before = (await clientCredentialsToken(rotated, 'documents:read')).access_token;
    await server.services.clients.rotateSecret(rotated.client.client_id);
    expect((await api.request('GET', '/documents', { token: before })).status).toBe(401);

    const machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'documents:read' });
    const token = (await clientCredentialsToken(machine, 'documents:read')).access_token;
    expect((await api.request('GET', '/documents', { token })).status).toBe(200);

    // Another instance (or the CLI) records the revocation; this one reads it within REVOCATION_REFRESH_SECONDS.
    const elsewhere = new TokenRevocations(server.services.connection, 3600, createLogger('silent'));
    await elsewhere.revoke('client', machine.client.client_id);
    let status = 200;
    for (let waited = 0; status === 200 && waited < 5000; waited += 100) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = (await api.request('GET', '/documents', { token })).status;
    }
    expect(status).toBe(401);
  });
});

describe('scopes', () => {
  test('a token with only documents:write can change a document but gets it back without content', async () => {
    const doc = await createDoc(users.ada.token, { title: 'Secret plans', content: 'the secret' });
    const writeOnly = (await signInFor(users.ada.email, 'openid documents:write')).access_token;
    expect(decodeJwt(writeOnly).scope).toBe('documents:write');
    const patched = await api.request('PATCH', `/documents/${doc.id}`, { token: writeOnly, json: { tags: ['x'] } });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ id: doc.id, tags: ['x'] });
    expect(patched.body).not.toHaveProperty('content');
    expect((await api.request('GET', `/documents/${doc.id}`, { token: writeOnly })).status).toBe(403);
  });

  test('a token with only documents:read cannot write (403 insufficient_scope naming the scope)', async () => {
    const readOnly = (await signInFor(users.ada.email, 'openid documents:read')).access_token;
    expect(decodeJwt(readOnly).scope).toBe('documents:read');
    expect((await api.request('GET', '/documents', { token: readOnly })).status).toBe(200);
    const refused = await api.request('POST', '/documents', { token: readOnly, json: { title: 'nope' } });
    expect(refused.status).toBe(403);
    expect(problemOf(refused).type).toBe('insufficient-scope');
    expect(refused.body.detail).toContain('documents:write');
    expect(refused.headers.get('www-authenticate')).toBe('Bearer realm="documents", error="insufficient_scope", scope="documents:write"');
  });
});

describe('bad input is refused with 400/413/415 and changes nothing', () => {
  let doc: Doc;
  const token = () => users.ada.token;
  const snapshot = async () => ({
    doc: (await api.request<Doc>('GET', `/documents/${doc.id}`, { token: token() })).body,
    count: await server.services.connection.collection('documents').countDocuments(),
  });

  beforeAll(async () => {
    doc = await createDoc(users.ada.token, { title: 'Guarded', content: 'original', tags: ['keep'] });
  });

  test.each([
    ['operator in a value', { title: { $gt: '' } }, '/title'],
    ['operator as a key', { title: 'x', $where: 'sleep(1000)' }, '/$where'],
    ['operator inside an array', { title: 'x', tags: [{ $ne: null }] }, '/tags/0'],
    ['unknown field', { title: 'x', owner: 'someone-else' }, '/owner'],
    ['wrong type', { title: 42 }, '/title'],
    ['title over 200 characters', { title: 'x'.repeat(201) }, '/title'],
    ['blank title', { title: '   ' }, '/title'],
    ['content over 1 MiB', { title: 'x', content: 'é'.repeat(512 * 1024 + 1) }, '/content'],
    ['too many tags', { title: 'x', tags: Array.from({ length: 21 }, (_, i) => `t${i}`) }, '/tags'],
    ['control character in the title', { title: 'a\u001bb' }, '/title'],
    ['control character in a tag', { title: 'x', tags: ['ok', 'a\nb'] }, '/tags/1'],
    // JSON.stringify writes a lone surrogate as the escape "\ud800", which JSON.parse restores.
    ['lone surrogate in the title', { title: 'a\ud800' }, '/title'],
    ['lone surrogate in the content', { title: 'x', content: '\udfff' }, '/content'],
  ])('POST and PATCH: %s', async (_name, body, pointer) => {
    const before = await snapshot();
    const created = await api.request('POST', '/documents', { token: token(), json: body });
    expect(created.status).toBe(400);
    expect(problemOf(created).type).toBe('validation-error');
    expect(created.body.errors).toEqual(expect.arrayContaining([expect.objectContaining({ pointer })]));
    expect(created.body.detail).toContain(pointer);
    const patched = await api.request('PATCH', `/documents/${doc.id}`, { token: token(), json: body });
    expect(patched.status).toBe(400);
    expect(await snapshot()).toEqual(before);
  });

  test.each([
    ['limit=0', 'limit'], ['limit=101', 'limit'], ['limit=ten', 'limit'], ['tag[$ne]=x', 'tag[$ne]'], ['tag=a&tag=b', 'tag'],
    ['cursor=not-a-cursor', 'cursor'], ['sort=title', 'sort'], ['q=%07', 'q'], ['q=%ED%A0%80', 'q'],
  ])('list query %s', async (query, parameter) => {
    const response = await api.request('GET', `/documents?${query}`, { token: token() });
    expect(response.status).toBe(400);
    expect(problemOf(response).type).toBe('validation-error');
    expect(response.body.errors).toEqual([expect.objectContaining({ parameter })]);
    expect(response.body.detail).toContain(parameter);
  });

  test('malformed ids, bodies and media types', async () => {
    const before = await snapshot();
    for (const id of ['not-an-id', '%7B%22%24gt%22%3A%22%22%7D', '..%2F..%2Fetc', '6f1c1f7e-2a7b-4b8e-9d3c-1a2b3c4d5e6f']) {
      const response = await api.request('GET', `/documents/${id}`, { token: token() });
      expect([id, response.status, response.body.errors]).toEqual([id, 400, [expect.objectContaining({ parameter: 'id' })]]);
    }
    const notUtf8 = await api.request('POST', '/documents', {
      token: token(), body: Buffer.concat([Buffer.from('{"title":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]),
      headers: { 'content-type': 'application/json' },
    });
    expect([notUtf8.status, notUtf8.body.errors]).toEqual([400, [expect.objectContaining({ pointer: '' })]]);
    for (const body of ['{"title": ', '{"title":"x","__proto__":{"admin":true}}', '"just a string"']) {
      const malformed = await api.request('POST', '/documents', { token: token(), body, headers: { 'content-type': 'application/json' } });
      expect([body, malformed.status]).toEqual([body, 400]);
    }
    const form = await api.request('POST', '/documents', { token: token(), body: 'title=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(form.status).toBe(415);
    const huge = await api.request('POST', '/documents', { token: token(), json: { title: 'x', content: 'a'.repeat(3 * 1024 * 1024) } });
    expect(huge.status).toBe(413);
    const emptyPatch = await api.request('PATCH', `/documents/${doc.id}`, { token: token(), json: {} });
    expect(emptyPatch.status).toBe(400);
    expect(await snapshot()).toEqual(before);
  });

  test('unknown routes and methods under /api answer problem+json', async () => {
    const unknown = await fetch(`${server.issuer}/api/v1/nothing-here`, { headers: { authorization: `Bearer ${token()}` } });
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const wrongMethod = await fetch(`${api.base}/documents`, { method: 'PUT', headers: { authorization: `Bearer ${token()}` } });
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    // RFC 9110 15.5.6: the methods the resource does support.
    expect(wrongMethod.headers.get('allow')).toBe('GET, HEAD, POST, OPTIONS');
    const onShare = await fetch(`${api.base}/documents/${doc.id}/shares/${users.bob.id}`, { method: 'GET', headers: { authorization: `Bearer ${token()}` } });
    expect([onShare.status, onShare.headers.get('allow')]).toEqual([405, 'DELETE, OPTIONS']);
  });
});

describe('concurrent writes (the database may not make conditional updates atomic)', () => {
  test('parallel PATCHes with the same If-Match: exactly one wins, the rest get 412', async () => {
    const doc = await createDoc(users.ada.token, { title: 'Race' });
    const etag = '"v1"';
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      api.request('PATCH', `/documents/${doc.id}`, { token: users.ada.token, json: { title: `Writer ${i}` }, headers: { 'if-match': etag } })));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 412)).toHaveLength(9);
    const winner = results.find((r) => r.status === 200)!.body as Doc;
    expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token: users.ada.token })).body).toMatchObject({ title: winner.title, version: 2 });
  });

  test('parallel PATCHes to different fields lose no update', async () => {
    const doc = await createDoc(users.ada.token, { title: 'Merge', content: 'start' });
    const results = await Promise.all([
      api.request('PATCH', `/documents/${doc.id}`, { token: users.ada.token, json: { title: 'Merged title' } }),
      api.request('PATCH', `/documents/${doc.id}`, { token: users.ada.token, json: { content: 'merged content' } }),
      api.request('PATCH', `/documents/${doc.id}`, { token: users.ada.token, json: { tags: ['merged'] } }),
    ]);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
    expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token: users.ada.token })).body)
      .toMatchObject({ title: 'Merged title', content: 'merged content', tags: ['merged'], version: 4 });
  });

  test('a delete racing updates wins cleanly: the document stays gone and no claim is left behind', async () => {
    const doc = await createDoc(users.ada.token, { title: 'Doomed' });
    const [deleted, ...patches] = await Promise.all([
      api.request('DELETE', `/documents/${doc.id}`, { token: users.ada.token }),
      ...Array.from({ length: 6 }, (_, i) => api.request('PATCH', `/documents/${doc.id}`, { token: users.ada.token, json: { title: `Still here ${i}` } })),
    ]);
    expect(deleted!.status).toBe(204);
    for (const patch of patches) expect([200, 404]).toContain(patch.status);
    expect((await api.request('GET', `/documents/${doc.id}`, { token: users.ada.token })).status).toBe(404);
    expect(await server.services.connection.collection('documents').countDocuments({ _id: doc.id } as never)).toBe(0);
    expect(await server.services.connection.collection('document_version_claims').countDocuments()).toBe(0);
  });
});

describe('CORS and the OpenAPI document', () => {
  test('preflight from an allowed origin is answered; other origins get no CORS headers', async () => {
    const preflight = (origin: string) => fetch(`${api.base}/documents`, {
      method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
    });
    const allowed = await preflight(APP_ORIGIN);
    expect(allowed.status).toBe(204);
    expect(allowed.headers.get('access-control-allow-origin')).toBe(APP_ORIGIN);
    expect(allowed.headers.get('access-control-allow-headers')).toContain('Authorization');
    const denied = await preflight('http://evil.example');
    expect(denied.headers.get('access-control-allow-origin')).toBeNull();

    const actual = await fetch(`${api.base}/documents`, { headers: { origin: APP_ORIGIN, authorization: `Bearer ${users.ada.token}` } });
    expect(actual.headers.get('access-control-allow-origin')).toBe(APP_ORIGIN);
    expect(actual.headers.get('access-control-expose-headers')).toContain('ETag');
    // Only the API: the provider's own pages stay same-origin.
    const page = await fetch(`${server.issuer}/healthz`, { headers: { origin: APP_ORIGIN } });
    expect(page.headers.get('access-control-allow-origin')).toBeNull();
  });

  test('RFC 9728 protected resource metadata names the resource, its provider and scopes', async () => {
    const response = await fetch(`${server.issuer}/.well-known/oauth-protected-resource/api`);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({
      resource: audience, authorization_servers: [server.issuer], bearer_methods_supported: ['header'],
      scopes_supported: ['documents:read', 'documents:write', 'documents:admin'],
    });
  });

  test('the OpenAPI document is valid OpenAPI 3.1', async () => {
    const validator = new Validator();
    const result = await validator.validate(api.spec as Parameters<Validator["validate"]>[0]);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(api.spec.openapi).toBe('3.1.0');
  });

  // Declared last: by now the suites above have called every documented operation, and each
  // response was validated against the document as it arrived.
  test('every documented operation was exercised and every response matched the document', () => {
    expect([...api.exercised].sort()).toEqual(api.operations().sort());
  });
});
