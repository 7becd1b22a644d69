/** Runs the adapter contract against the MongoDB-compatible server started for the test run. */
import mongoose from 'mongoose';
import { ArtifactStore } from '../adapters/mongodb.ts';
import { RequestMemo, withRequestMemo } from '../src/http/request-memo.ts';
import { describeAdapterContract } from './adapter/contract.ts';
import { testMongoUri } from './support/env.ts';

/** The store as the server detects it, and with secondary keys read through indexes as on real MongoDB. */
for (const indexedKeys of [undefined, true]) {
  describeAdapterContract(`MongoDB (mongoose connection${indexedKeys ? ', secondary keys through indexes' : ''})`, async () => {
    const conn = await mongoose.createConnection(testMongoUri('adapter'), { autoIndex: false }).asPromise();
    const store = new ArtifactStore(conn, { indexedKeys });
    await store.ensureIndexes();
    return {
      store,
      async close() {
        await conn.dropDatabase().catch(() => {});
        await conn.close();
      },
    };
  });
}

describe('client metadata cache', () => {
  let conn: mongoose.Connection;
  beforeAll(async () => {
    conn = await mongoose.createConnection(testMongoUri('clientcache'), { autoIndex: false }).asPromise();
  });
  afterAll(async () => {
    await conn.dropDatabase().catch(() => {});
    await conn.close();
  });

  test('an instance reuses client metadata until it changes it itself or the cache time passes', async () => {
    const store = new ArtifactStore(conn, { clientCacheSeconds: 1 });
    const other = new ArtifactStore(conn); // another instance (or the CLI), without a cache
    const clients = store.adapterFor('Client');
    await clients.upsert('c1', { client_id: 'c1', client_name: 'first' });
    expect(await clients.find('c1')).toMatchObject({ client_name: 'first' });

    await other.adapterFor('Client').upsert('c1', { client_id: 'c1', client_name: 'changed elsewhere' });
    expect(await clients.find('c1')).toMatchObject({ client_name: 'first' });
    await new Promise((r) => setTimeout(r, 1100));
    expect(await clients.find('c1')).toMatchObject({ client_name: 'changed elsewhere' });

    // Its own writes and deletes are seen at once.
    await clients.upsert('c1', { client_id: 'c1', client_name: 'changed here' });
    expect(await clients.find('c1')).toMatchObject({ client_name: 'changed here' });
    await clients.destroy('c1');
    expect(await clients.find('c1')).toBeUndefined();
  });

  test('other models and a zero cache time always read the database', async () => {
    const store = new ArtifactStore(conn, { clientCacheSeconds: 0 });
    const other = new ArtifactStore(conn);
    await store.adapterFor('Client').upsert('c2', { client_id: 'c2', client_name: 'a' });
    expect(await store.adapterFor('Client').find('c2')).toMatchObject({ client_name: 'a' });
    await other.adapterFor('Client').upsert('c2', { client_id: 'c2', client_name: 'b' });
    expect(await store.adapterFor('Client').find('c2')).toMatchObject({ client_name: 'b' });

    const cached = new ArtifactStore(conn, { clientCacheSeconds: 60 });
    await cached.adapterFor('Grant').upsert('g1', { accountId: 'a' }, 60);
    expect(await cached.adapterFor('Grant').find('g1')).toMatchObject({ accountId: 'a' });
    await other.adapterFor('Grant').upsert('g1', { accountId: 'b' }, 60);
    expect(await cached.adapterFor('Grant').find('g1')).toMatchObject({ accountId: 'b' });
  });
});

describe('request memo', () => {
  let conn: mongoose.Connection;
  beforeAll(async () => {
    conn = await mongoose.createConnection(testMongoUri('memo'), { autoIndex: false }).asPromise();
  });
  afterAll(async () => {
    await conn.dropDatabase().catch(() => {});
    await conn.close();
  });

  test('a request reads a document once; the next request, a revocation or a timer left behind reads it afresh', async () => {
    const store = new ArtifactStore(conn);
    // Another instance's write: straight to the collection, as this process's memo never sees it.
    const elsewhere = (scope: string) => conn.collection('oidc_accesstoken').updateOne({ _id: 't1' as never }, { $set: { 'payload.scope': scope } });
    const tokens = store.adapterFor('AccessToken');
    await tokens.upsert('t1', { jti: 't1', grantId: 'g1', scope: 'a' }, 60);
    let later: Promise<unknown> | undefined;
    let endRequest = () => {};
    const requestOver = new Promise<void>((resolve) => { endRequest = resolve; });
    await withRequestMemo(async () => {
      expect(await tokens.find('t1')).toMatchObject({ scope: 'a' });
      await elsewhere('b');
      expect(await tokens.find('t1')).toMatchObject({ scope: 'a' }); // this request's read
      // Work this request leaves behind, run once the request is over.
      later = new Promise((resolve) => { setTimeout(() => resolve(requestOver.then(() => tokens.find('t1'))), 0); });
      await elsewhere('c');
      await store.revokeGrant('other-grant'); // any revocation: what was read may be gone
      expect(await tokens.find('t1')).toMatchObject({ scope: 'c' });
    });
    await elsewhere('d');
    endRequest();
    expect(await later).toMatchObject({ scope: 'd' });
    expect(await withRequestMemo(() => tokens.find('t1'))).toMatchObject({ scope: 'd' });
  });

  test('a read that began before a revocation does not put back what it found', () => {
    const memo = new RequestMemo();
    const readAt = memo.generation;
    memo.forgetAll();
    memo.set('k', { stale: true }, readAt);
    expect(memo.get('k')).toBeUndefined();
    memo.set('k', { fresh: true });
    expect(memo.get('k')).toEqual({ fresh: true });
  });
});
