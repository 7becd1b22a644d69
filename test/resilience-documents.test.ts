/**
 * The documents API when requests are retried, collide, or lose the database, over real HTTP
 * through the real app: a POST retried with its Idempotency-Key creates one document and answers
 * as the first request did; parallel PATCHes without If-Match all succeed; every acknowledged
 * write has exactly one audit record, stored with the change and relayed when its own audit write
 * did not happen; a title search that runs past the list time limit is stopped by the database;
 * and on a database of the suite's own that hangs and then dies, creates retried with their keys
 * after it recovers are none lost and none duplicated.
 */
import { randomUUID } from 'node:crypto';
import { jest } from '@jest/globals';
import mongoose, { type Connection } from 'mongoose';
import * as oidc from 'openid-client';
import { AuditLog } from '../src/audit/log.ts';
import type { DocumentRecord } from '../src/documents/model.ts';
import { DocumentService } from '../src/documents/service.ts';
import type { Caller as DocumentCaller } from '../src/documents/token.ts';
import { uuidv7 } from '../src/ids.ts';
import { ApiClient, type ApiResponse } from './support/api.ts';
import { Browser } from './support/browser.ts';
import { testMongoUri } from './support/env.ts';
import { startFaultyMongo, type FaultyService } from './support/faults.ts';
import { authorizationRequest, callbackUrl, exchangeCode, registerRelyingParty, signIn } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

jest.setTimeout(180_000);

const password = 'correct horse battery staple';
const SCOPE = 'documents:read documents:write';

interface Doc { id: string; title: string; content: string; version: number }
/** A created document or, for a refusal, the problem (the client validates which against the contract). */
type Answer = Doc & { type?: string; errors?: { parameter?: string }[] };
interface Caller { token: string; sub: string; clientId: string }

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const newKey = () => `"${randomUUID()}"`;
const keyed = (key: string) => ({ 'idempotency-key': key });
const problemType = (body: { type?: string } | undefined) => body?.type?.split(':').at(-1);

/** A user signed in through the real pages of a new client, and a client_credentials client. */
async function callersOf(server: TestServer, email: string): Promise<{ user: Caller; otherClient: Caller; machine: Caller }> {
  const account = await server.services.accounts.create({ email, password, emailVerified: true });
  const signInWith = async () => {
    const rp = await registerRelyingParty(server, { scope: `openid ${SCOPE}` });
    const request = await authorizationRequest(rp, { scope: `openid ${SCOPE}` });
    const callback = callbackUrl(await signIn(new Browser(), server, request.url, email, password));
    const tokens = await exchangeCode(rp, request, callback);
    return { token: tokens.access_token, sub: account.id, clientId: rp.client.client_id };
  };
  const machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: SCOPE });
  const machineToken = (await oidc.clientCredentialsGrant(machine.config, { scope: SCOPE })).access_token;
  return {
    user: await signInWith(),
    otherClient: await signInWith(),
    machine: { token: machineToken, sub: machine.client.client_id, clientId: machine.client.client_id },
  };
}

const documentsOf = (server: TestServer) => server.services.connection.collection<DocumentRecord>('documents');
/** Records of changes (refused requests are audited too, as 'denied'). */
const auditCount = (server: TestServer, filter: Record<string, unknown>) =>
  server.services.connection.collection('audit_events').countDocuments({ outcome: 'success', ...filter });

describe('on the shared database', () => {
  let server: TestServer;
  /** A second instance of the app on the same database, as behind a load balancer. */
  let twin: TestServer;
  let api: ApiClient;
  let twinApi: ApiClient;
  let ada: Caller;
  let adaElsewhere: Caller;
  let machine: Caller;

  beforeAll(async () => {
    server = await startTestServer();
    twin = await startTestServer({ MONGODB_URI: server.services.config.mongodbUri!, ISSUER: server.issuer });
    [api, twinApi] = await Promise.all([ApiClient.connect(server), ApiClient.connect(twin)]);
    ({ user: ada, otherClient: adaElsewhere, machine } = await callersOf(server, 'ada@example.com'));
  });

  afterAll(async () => {
    await twin?.close();
    await server?.close();
  });

  const create = (caller: Caller, json: Record<string, unknown>, key?: string) =>
    api.request<Answer>('POST', '/documents', { token: caller.token, json, ...(key ? { headers: keyed(key) } : {}) });

  describe('Idempotency-Key on POST /documents', () => {
    test('a retry answers as the first request did and creates nothing, also after the document changed or was deleted', async () => {
      const key = newKey();
      const input = { title: `Once ${randomUUID()}`, content: 'first words', tags: ['a'] };
      const first = await create(ada, input, key);
      expect(first.status).toBe(201);
      const answer = (response: typeof first) => ({
        status: response.status, body: response.body, location: response.headers.get('location'), etag: response.headers.get('etag'),
      });
      const count = () => documentsOf(server).countDocuments();
      const before = await count();

      expect(answer(await create(ada, input, key))).toEqual(answer(first));
      expect(await count()).toBe(before);

      const id = first.body.id;
      expect((await api.request('PATCH', `/documents/${id}`, { token: ada.token, json: { title: 'Changed since' } })).status).toBe(200);
      expect(answer(await create(ada, input, key))).toEqual(answer(first));
      expect((await api.request<Doc>('GET', `/documents/${id}`, { token: ada.token })).body.title).toBe('Changed since');

      expect((await api.request('DELETE', `/documents/${id}`, { token: ada.token })).status).toBe(204);
      expect(answer(await create(ada, input, key))).toEqual(answer(first));
      expect((await api.request('GET', `/documents/${id}`, { token: ada.token })).status).toBe(404);
      const listed = await api.request<{ items: Doc[] }>('GET', '/documents?limit=100', { token: ada.token });
      expect(listed.body.items.map((d) => d.id)).not.toContain(id);
      expect(await documentsOf(server).countDocuments({ deletedAt: { $exists: false }, title: input.title })).toBe(0);
      // Kept as a tombstone while its key is valid: that is what the last retry found.
      expect(await count()).toBe(before);

      // One record per change, none for the replays.
      for (const action of ['document.create', 'document.update', 'document.delete']) {
        expect([action, await auditCount(server, { target: id, action })]).toEqual([action, 1]);
      }
      // Without a key the same request is a new document each time: the key is what prevents it.
      const [a, b] = [await create(ada, input), await create(ada, input)];
      expect(a.body.id).not.toBe(b.body.id);
    });

    test('the same key with other content is refused with 422; keys are per caller (user and client)', async () => {
      const key = newKey();
      const title = `Keyed ${randomUUID()}`;
      const first = await create(ada, { title }, key);
      expect(first.status).toBe(201);

      const reused = await create(ada, { title: `${title} (other)` }, key);
      expect([reused.status, problemType(reused.body)]).toEqual([422, 'idempotency-key-reused']);
      expect(await documentsOf(server).countDocuments({ title: `${title} (other)` })).toBe(0);

      const byMachine = await create(machine, { title: `${title} (other)` }, key);
      const byAdaElsewhere = await create(adaElsewhere, { title }, key);
      expect([byMachine.status, byAdaElsewhere.status]).toEqual([201, 201]);
      expect(new Set([first.body.id, byMachine.body.id, byAdaElsewhere.body.id]).size).toBe(3);
      expect(await documentsOf(server).countDocuments({ title })).toBe(2);
    });

    test('a key that is not one RFC 8941 string is refused with 400 and creates nothing', async () => {
      const title = `Bad key ${randomUUID()}`;
      for (const key of ['no-quotes', '""', '"a", "b"', '"bad \\escape"', `"${'k'.repeat(256)}"`, '"trailing" x']) {
        const refused = await create(ada, { title }, key);
        expect([key, refused.status, refused.body.errors]).toEqual([key, 400, [expect.objectContaining({ parameter: 'Idempotency-Key' })]]);
      }
      expect(await documentsOf(server).countDocuments({ title })).toBe(0);
      // Escapes are part of the key: this one is accepted.
      expect((await create(ada, { title }, '"quote \\" and backslash \\\\"')).status).toBe(201);
    });

    test('concurrent requests with one key make one document; the others answer with it or 409 with Retry-After', async () => {
      const key = newKey();
      const input = { title: `Concurrent ${randomUUID()}` };
      const answers = await Promise.all(Array.from({ length: 10 }, () => create(ada, input, key)));
      const created = answers.filter((r) => r.status === 201);
      const busy = answers.filter((r) => r.status !== 201);
      expect(created.length).toBeGreaterThan(0);
      expect(new Set(created.map((r) => r.body.id)).size).toBe(1);
      for (const response of busy) {
        expect([response.status, problemType(response.body), response.headers.get('retry-after')]).toEqual([409, 'idempotency-key-in-use', '1']);
      }
      expect(await documentsOf(server).countDocuments({ title: input.title })).toBe(1);
      expect((await create(ada, input, key)).body.id).toBe(created[0]!.body.id);
    });
  });

  describe('PATCH without If-Match: the last writer wins', () => {
    test('50 parallel PATCHes, through two instances, all succeed; the document ends as one of them; each has one audit record', async () => {
      const doc = (await create(ada, { title: 'Contended', content: 'start' })).body;
      const patches = Array.from({ length: 50 }, (_, i) => ({ title: `Writer ${i}`, content: `content of writer ${i}` }));
      const started = Date.now();
      // Writers in one instance take turns; the two instances race for each version.
      const results = await Promise.all(patches.map((json, i) =>
        (i % 2 ? twinApi : api).request<Doc>('PATCH', `/documents/${doc.id}`, { token: ada.token, json })));
      expect(results.map((r) => (r.status === 200 ? 200 : `${r.status} ${r.bytes.toString()}`))).toEqual(patches.map(() => 200));
      expect(Date.now() - started).toBeLessThan(30_000);

      const final = (await api.request<Doc>('GET', `/documents/${doc.id}`, { token: ada.token })).body;
      expect(final.version).toBe(51);
      // Whole patches, never a title from one writer and the content from another.
      expect(patches).toContainEqual({ title: final.title, content: final.content });
      expect(new Set(results.map((r) => r.body.version)).size).toBe(50);

      const events = await server.services.connection.collection('audit_events').find({ target: doc.id, action: 'document.update' }).toArray();
      expect(events).toHaveLength(50);
      expect(new Set(events.map((e) => e.requestId)).size).toBe(50);
      await server.services.documents.relayPendingAudit(new Date());
      expect(await auditCount(server, { target: doc.id, action: 'document.update' })).toBe(50);
      expect((await documentsOf(server).findOne({ _id: doc.id }))?.pendingAudit ?? []).toEqual([]);
      expect(await server.services.connection.collection('document_version_claims').countDocuments()).toBe(0);
    });

    test('with If-Match the behaviour is unchanged: a stale ETag gets 412 and changes nothing', async () => {
      const doc = (await create(ada, { title: 'Guarded by ETag' })).body;
      const results = await Promise.all(Array.from({ length: 5 }, (_, i) =>
        api.request('PATCH', `/documents/${doc.id}`, { token: ada.token, json: { title: `Guarded ${i}` }, headers: { 'if-match': '"v1"' } })));
      expect(results.map((r) => r.status).sort()).toEqual([200, 412, 412, 412, 412]);
      expect((await api.request<Doc>('GET', `/documents/${doc.id}`, { token: ada.token })).body.version).toBe(2);
      expect(await auditCount(server, { target: doc.id, action: 'document.update' })).toBe(1);
    });
  });

  describe('the audit outbox', () => {
    const lostEvent = (target: string, action: string) => AuditLog.event({
      actor: { sub: ada.sub, clientId: ada.clientId }, action, target, outcome: 'success', ip: '127.0.0.1', requestId: null,
    }, new Date(Date.now() - 60_000));

    test('a change stored without its audit record (the process died in between) is relayed, once', async () => {
      const doc = (await create(ada, { title: 'Relayed' })).body;
      // What a change leaves behind when the process dies between its write and the audit write.
      const event = lostEvent(doc.id, 'document.update');
      await documentsOf(server).updateOne({ _id: doc.id }, { $set: { title: 'Relayed, changed', version: 2 }, $push: { pendingAudit: event } });
      expect(await auditCount(server, { _id: event._id })).toBe(0);

      await server.services.documents.relayPendingAudit();
      await server.services.documents.relayPendingAudit();
      expect(await auditCount(server, { _id: event._id })).toBe(1);
      expect(await auditCount(server, { target: doc.id })).toBe(2);
      expect((await documentsOf(server).findOne({ _id: doc.id }))?.pendingAudit).toEqual([]);
      expect((await api.request('GET', `/documents/${doc.id}`, { token: ada.token })).headers.get('etag')).toBe('"v2"');
    });

    test('a delete that was not completed: the document is gone for every read at once, and the relay removes it', async () => {
      const doc = (await create(ada, { title: 'Half deleted' })).body;
      const upload = await api.request('PUT', `/documents/${doc.id}/file`, { token: ada.token, body: 'bytes', headers: { 'content-type': 'text/plain' } });
      expect(upload.status).toBe(200);
      const event = lostEvent(doc.id, 'document.delete');
      await documentsOf(server).updateOne({ _id: doc.id }, { $set: { deletedAt: new Date(), version: 3 }, $push: { pendingAudit: event } });

      for (const path of [`/documents/${doc.id}`, `/documents/${doc.id}/file`]) {
        expect([path, (await api.request('GET', path, { token: ada.token })).status]).toEqual([path, 404]);
      }
      expect((await api.request('PATCH', `/documents/${doc.id}`, { token: ada.token, json: { title: 'x' } })).status).toBe(404);
      expect((await api.request('DELETE', `/documents/${doc.id}`, { token: ada.token })).status).toBe(404);
      const listed = await api.request<{ items: Doc[] }>('GET', '/documents?limit=100', { token: ada.token });
      expect(listed.body.items.map((d) => d.id)).not.toContain(doc.id);

      await server.services.documents.relayPendingAudit();
      expect(await documentsOf(server).countDocuments({ _id: doc.id })).toBe(0);
      expect(await server.services.connection.collection('document_files.files').countDocuments({ 'metadata.documentId': doc.id })).toBe(0);
      expect(await auditCount(server, { target: doc.id, action: 'document.delete' })).toBe(1);
    });
  });

  describe('a title search that runs long', () => {
    /** Enough documents that searching every title takes well over a millisecond, on MongoDB too. */
    const HAYSTACK = 10_000;
    let connection: Connection;

    beforeAll(async () => {
      connection = await mongoose.createConnection(testMongoUri('doclist'), { autoIndex: false }).asPromise();
    });

    afterAll(async () => {
      await connection?.dropDatabase();
      await connection?.close();
    });

    test('is stopped by the database at the service\'s list time limit (maxTimeMS); the same search answers within a longer one', async () => {
      const { accounts, logger } = server.services;
      const hurried = new DocumentService(connection, accounts, logger, undefined, { listTimeMs: 1 });
      const patient = new DocumentService(connection, accounts, logger, undefined, { listTimeMs: 60_000 });
      await patient.ensureIndexes();
      const owner: DocumentCaller = { kind: 'client', sub: 'searcher', clientId: 'searcher', scopes: new Set(SCOPE.split(' ')) };
      // The oldest document, so the newest-first search has to read every other title to reach it.
      const needle = await patient.create(owner, { title: 'The needle' }, { ip: '127.0.0.1', requestId: null });
      const after = needle.doc.createdAt.getTime() + 1;
      await connection.collection<DocumentRecord>('documents').insertMany(Array.from({ length: HAYSTACK }, (_, i) => ({
        ...needle.doc, _id: uuidv7(after + i), title: `Hay ${i} ${'x'.repeat(180)}`,
      })));
      const search = { limit: 20, q: 'NEEDLE' };

      await expect(hurried.list(owner, search)).rejects.toMatchObject({ code: 50, codeName: 'MaxTimeMSExpired' });
      const found = await patient.list(owner, search);
      expect(found.items.map(({ doc }) => doc._id)).toEqual([needle.doc._id]);
    });
  });
});

describe('on a database that hangs and dies', () => {
  let mongo: FaultyService;
  let server: TestServer;
  let api: ApiClient;
  let ada: Caller;

  beforeAll(async () => {
    mongo = await startFaultyMongo();
    server = await startTestServer({ MONGODB_URI: `${mongo.uri}/docs` });
    api = await ApiClient.connect(server);
    ({ user: ada } = await callersOf(server, 'ada@example.com'));
    // Verified once, so later requests need no database for the token.
    expect((await api.request('GET', '/documents', { token: ada.token })).status).toBe(200);
  });

  afterAll(async () => {
    await server?.close();
    await mongo?.stop();
  });

  /** One attempt as a client makes it: the answer's status (0 when the client gave up waiting). */
  async function attempt(key: string, json: Record<string, unknown>, timeoutMs: number): Promise<{ status: number; id?: string; retryAfter?: string | null }> {
    try {
      const response = await fetch(`${api.base}/documents`, {
        method: 'POST', body: JSON.stringify(json), signal: AbortSignal.timeout(timeoutMs),
        headers: { authorization: `Bearer ${ada.token}`, 'content-type': 'application/json', ...keyed(key) },
      });
      const body = response.headers.get('content-type')?.includes('json') ? await response.json() as { id?: string } : undefined;
      return { status: response.status, retryAfter: response.headers.get('retry-after'), ...(response.status === 201 ? { id: body?.id } : {}) };
    } catch {
      return { status: 0 };
    }
  }

  /** Retries with the same key until 201 (waiting as Retry-After asks, at most 1 s), within `deadline`. */
  async function createdAfterRetries(key: string, json: Record<string, unknown>, deadline: number): Promise<Doc> {
    for (;;) {
      const response = await api.request<Doc>('POST', '/documents', { token: ada.token, json, headers: keyed(key) });
      if (response.status === 201) return response.body;
      if (response.status < 500 && response.status !== 409) throw new Error(`refused with ${response.status}: ${response.bytes.toString()}`);
      if (Date.now() > deadline) throw new Error(`not created in time; last answer ${response.status}`);
      await sleep(Math.min(1000, Number(response.headers.get('retry-after') ?? '0.2') * 1000));
    }
  }

  async function untilAnswering(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await api.request('GET', '/documents', { token: ada.token })).status !== 200) {
      if (Date.now() > deadline) throw new Error('the API did not recover');
      await sleep(200);
    }
  }

  test('while the first request with a key hangs in the database, a retry gets 409 (422 with other content); after recovery, its document', async () => {
    // The retry must arrive after the first request and before this instance notices the hang
    // (then every request gets 503 at once): on a loaded machine that can take more than one try.
    let busy: ApiResponse<Answer> | undefined;
    for (let round = 0; round < 3 && busy?.status !== 409; round += 1) {
      const key = newKey();
      const input = { title: `Stuck ${randomUUID()}` };
      mongo.pause();
      const first = attempt(key, input, 15_000);
      let other: ApiResponse<Answer> | undefined;
      try {
        await sleep(150);
        busy = await api.request<Answer>('POST', '/documents', { token: ada.token, json: input, headers: keyed(key) });
        other = await api.request<Answer>('POST', '/documents', { token: ada.token, json: { title: 'something else' }, headers: keyed(key) });
      } finally {
        mongo.resume();
      }
      // Never a second document, whatever this instance had noticed.
      expect([409, 503]).toContain(busy.status);
      if (busy.status === 409) {
        expect([problemType(busy.body), busy.headers.get('retry-after')]).toEqual(['idempotency-key-in-use', '1']);
        expect([other.status, problemType(other.body)]).toEqual([422, 'idempotency-key-reused']);
      }
      const firstAnswer = await first;
      await untilAnswering(30_000);
      const doc = await createdAfterRetries(key, input, Date.now() + 30_000);
      if (firstAnswer.status === 201) expect(doc.id).toBe(firstAnswer.id);
      expect(await documentsOf(server).countDocuments({ title: input.title })).toBe(1);
      expect(await documentsOf(server).countDocuments({ title: 'something else' })).toBe(0);
    }
    expect(busy?.status).toBe(409);
  });

  test('creates with keys during a hang and a kill, retried after recovery: none lost, none duplicated, each audited once', async () => {
    const run = randomUUID().slice(0, 8);
    const planned = Array.from({ length: 18 }, (_, i) => ({ key: newKey(), json: { title: `Outage ${run} ${i}`, content: `body ${i}` } }));
    const firstAnswers = new Map<string, { status: number; id?: string; retryAfter?: string | null }>();
    const send = async (batch: typeof planned, timeoutMs: number, spacingMs: number) => {
      await Promise.all(batch.map(async (p, i) => {
        await sleep(i * spacingMs);
        firstAnswers.set(p.key, await attempt(p.key, p.json, timeoutMs));
      }));
    };

    await send(planned.slice(0, 3), 10_000, 0);
    expect([...firstAnswers.values()].map((a) => a.status)).toEqual([201, 201, 201]);

    // A hang: requests wait on the database; their answers do not arrive in time, though their
    // work may complete once it answers again.
    mongo.pause();
    try {
      await send(planned.slice(3, 9), 2500, 20);
    } finally {
      mongo.resume();
    }
    await untilAnswering(30_000);

    // A kill while requests are under way.
    const underway = send(planned.slice(9), 10_000, 25);
    await sleep(100);
    await mongo.kill();
    await underway;
    await mongo.restart();
    await untilAnswering(60_000);

    const runTitles = { title: { $regex: `^Outage ${run} ` } };
    const storedBeforeRetries = await documentsOf(server).countDocuments(runTitles);
    const deadline = Date.now() + 60_000;
    const docs = await Promise.all(planned.map((p) => createdAfterRetries(p.key, p.json, deadline)));
    const outage = planned.slice(3).map((p) => firstAnswers.get(p.key)!.status);
    // Every answer during the outage came in time (the clients waited 2.5 s during the hang) and
    // was either the document or an honest 503 with Retry-After: never a 500.
    expect(outage.filter((status) => status !== 201 && status !== 503)).toEqual([]);
    const unavailable = planned.slice(3).map((p) => firstAnswers.get(p.key)!).filter((a) => a.status === 503);
    expect(unavailable.filter((a) => !/^\d+$/.test(a.retryAfter ?? ''))).toEqual([]);
    const acknowledged = [...firstAnswers.values()].filter((a) => a.status === 201).length;
    // How many creates happened although their answer was lost (depends on timing; not asserted).
    process.stderr.write(`[resilience-documents] first answers during the outage: ${outage.join(' ')}; `
      + `stored before any retry: ${storedBeforeRetries}, of which acknowledged: ${acknowledged}\n`);
    // Every earlier 201 is the document the retry gets: nothing acknowledged was lost or replaced.
    planned.forEach((p, i) => {
      const first = firstAnswers.get(p.key)!;
      if (first.status === 201) expect([i, docs[i]!.id]).toEqual([i, first.id]);
      expect(docs[i]!.title).toBe(p.json.title);
    });
    expect(new Set(docs.map((d) => d.id)).size).toBe(planned.length);
    const stored = await documentsOf(server).find(runTitles, { projection: { title: 1 } }).toArray();
    expect(stored.map((d) => d.title).sort()).toEqual(planned.map((p) => p.json.title).sort());
    for (const doc of docs) {
      const read = await api.request<Doc>('GET', `/documents/${doc.id}`, { token: ada.token });
      expect([read.status, read.body.content]).toEqual([200, doc.content]);
    }

    // A change whose audit write failed is completed by the relay (startAuditRelay runs it in a server).
    await server.services.documents.relayPendingAudit(new Date());
    for (const doc of docs) {
      expect([doc.id, await auditCount(server, { target: doc.id, action: 'document.create' })]).toEqual([doc.id, 1]);
    }
    // What is still pending (its cleanup can wait for a claim a killed request left, until it is
    // stale) is already in the audit trail.
    const pending = (await documentsOf(server).find({ 'pendingAudit.0': { $exists: true } }).toArray()).flatMap((d) => d.pendingAudit ?? []);
    expect(await auditCount(server, { _id: { $in: pending.map((e) => e._id) } })).toBe(pending.length);
  });
});
