/**
 * A reusable conformance suite for the oidc-provider storage adapter (in the spirit of Dex's
 * storage conformance tests): any backend that yields an ArtifactStore must pass it unchanged.
 * Expiry is checked through the adapter itself, so it holds whether or not the server enforces
 * TTL indexes (FerretDB v1 does not; MongoDB does, lazily).
 */
import { randomUUID } from 'node:crypto';
import { errors, type AdapterPayload } from 'oidc-provider';
import { MODEL_NAMES, type ArtifactStore } from '../../adapters/mongodb.ts';
import { withRequestMemo } from '../../src/http/request-memo.ts';
import { opaqueTokenBits } from '../../adapters/token-ids.ts';

export interface AdapterHarness {
  store: ArtifactStore;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const id = () => randomUUID();

/** Index key specs of a model's collection, e.g. [{ 'payload.grantId': 1 }, ...]. */
async function indexKeys(store: ArtifactStore, model: string): Promise<Record<string, unknown>[]> {
  return (await store.collection(model).indexes()).map((index) => index.key as Record<string, unknown>);
}

export function describeAdapterContract(label: string, factory: () => Promise<AdapterHarness>): void {
  describe(`oidc-provider adapter contract: ${label}`, () => {
    let harness: AdapterHarness;
    let store: ArtifactStore;

    beforeAll(async () => {
      harness = await factory();
      store = harness.store;
    });

    afterAll(async () => {
      await harness?.close();
    });

    describe('upsert and find', () => {
      test('find returns the payload that was upserted', async () => {
        const adapter = store.adapterFor('AccessToken');
        const key = id();
        const payload: AdapterPayload = { jti: key, kind: 'AccessToken', accountId: 'acc-1', grantId: id(), scope: 'openid' };
        await adapter.upsert(key, payload, 60);
        expect(await adapter.find(key)).toEqual(payload);
      });

      test('a second upsert with the same id replaces the payload', async () => {
        const adapter = store.adapterFor('Grant');
        const key = id();
        await adapter.upsert(key, { jti: key, kind: 'Grant', accountId: 'old', scope: 'openid' }, 60);
        await adapter.upsert(key, { jti: key, kind: 'Grant', accountId: 'new' }, 60);
        expect(await adapter.find(key)).toEqual({ jti: key, kind: 'Grant', accountId: 'new' });
      });

      test('keys that MongoDB or FerretDB refuse (resource URLs with ".", a leading "$") round-trip unchanged', async () => {
        const adapter = store.adapterFor('Grant');
        const key = id();
        const payload: AdapterPayload = {
          jti: key, kind: 'Grant', accountId: 'acc',
          resources: { 'https://api.example.com/v1': 'documents:read', 'urn:x%2Ey': 'a' },
          odd: { $where: { 'a.b': ['%2E', { '$x.%': 1 }] } },
        };
        await adapter.upsert(key, payload, 60);
        expect(await adapter.find(key)).toEqual(payload);
        const stored = await store.collection('Grant').findOne({ _id: key });
        expect(JSON.stringify(stored!.payload)).not.toMatch(/"[^"]*\.[^"]*":|"\$/);
      });

      test('find of a missing id is undefined', async () => {
        expect(await store.adapterFor('AccessToken').find(id())).toBeUndefined();
      });

      test('an expired artifact is not returned by find, findByUid or findByUserCode', async () => {
        const session = store.adapterFor('Session');
        const device = store.adapterFor('DeviceCode');
        const token = store.adapterFor('AccessToken');
        const [sessionId, uid, deviceId, userCode, tokenId] = [id(), id(), id(), id(), id()];
        await session.upsert(sessionId, { jti: sessionId, kind: 'Session', uid }, 1);
        await device.upsert(deviceId, { jti: deviceId, kind: 'DeviceCode', userCode }, 1);
        await token.upsert(tokenId, { jti: tokenId, kind: 'AccessToken' }, 1);
        expect(await session.findByUid(uid)).toBeDefined();
        expect(await device.findByUserCode(userCode)).toBeDefined();
        expect(await token.find(tokenId)).toBeDefined();

        await sleep(1200);
        expect(await token.find(tokenId)).toBeUndefined();
        expect(await session.find(sessionId)).toBeUndefined();
        expect(await session.findByUid(uid)).toBeUndefined();
        expect(await device.find(deviceId)).toBeUndefined();
        expect(await device.findByUserCode(userCode)).toBeUndefined();
      });
    });

    describe('lookups by secondary key', () => {
      test('findByUid finds a Session by its uid', async () => {
        const adapter = store.adapterFor('Session');
        const [key, uid] = [id(), id()];
        await adapter.upsert(key, { jti: key, kind: 'Session', uid, accountId: 'acc-2' }, 60);
        expect(await adapter.findByUid(uid)).toEqual({ jti: key, kind: 'Session', uid, accountId: 'acc-2' });
        expect(await adapter.findByUid(id())).toBeUndefined();
      });

      test('findByUid follows a Session that is re-keyed under a new id with the same uid', async () => {
        // oidc-provider does this at sign-in (session fixation defence).
        const adapter = store.adapterFor('Session');
        const [oldKey, newKey, uid] = [id(), id(), id()];
        await adapter.upsert(oldKey, { jti: oldKey, kind: 'Session', uid }, 60);
        await adapter.destroy(oldKey);
        await adapter.upsert(newKey, { jti: newKey, kind: 'Session', uid, accountId: 'acc-3' }, 60);
        expect(await adapter.findByUid(uid)).toEqual({ jti: newKey, kind: 'Session', uid, accountId: 'acc-3' });
      });

      test('findByUid keeps finding a Session whose expiry rolls forward on use', async () => {
        const adapter = store.adapterFor('Session');
        const [key, uid] = [id(), id()];
        await adapter.upsert(key, { jti: key, kind: 'Session', uid }, 1);
        await adapter.upsert(key, { jti: key, kind: 'Session', uid, touched: 1 }, 60);
        await new Promise((r) => setTimeout(r, 1200));
        await store.sweepExpired();
        expect(await adapter.findByUid(uid)).toEqual({ jti: key, kind: 'Session', uid, touched: 1 });
      });

      test('findByUserCode finds a DeviceCode by its user code', async () => {
        const adapter = store.adapterFor('DeviceCode');
        const [key, userCode] = [id(), id()];
        await adapter.upsert(key, { jti: key, kind: 'DeviceCode', userCode, clientId: 'c' }, 60);
        expect(await adapter.findByUserCode(userCode)).toEqual({ jti: key, kind: 'DeviceCode', userCode, clientId: 'c' });
        expect(await adapter.findByUserCode(id())).toBeUndefined();
      });
    });

    describe('secondary keys stay in step with their artifacts', () => {
      test('a destroyed Session is not found by its uid, with or without a read in the same request', async () => {
        const adapter = store.adapterFor('Session');
        const [read, unread, uidRead, uidUnread] = [id(), id(), id(), id()];
        await adapter.upsert(read, { jti: read, kind: 'Session', uid: uidRead }, 60);
        await adapter.upsert(unread, { jti: unread, kind: 'Session', uid: uidUnread }, 60);
        await withRequestMemo(async () => {
          expect(await adapter.find(read)).toBeDefined();
          await adapter.destroy(read);
          expect(await adapter.findByUid(uidRead)).toBeUndefined();
        });
        await withRequestMemo(() => adapter.destroy(unread));
        expect(await adapter.findByUid(uidRead)).toBeUndefined();
        expect(await adapter.findByUid(uidUnread)).toBeUndefined();
        expect(await store.collection('Session').countDocuments({ 'payload.uid': { $in: [uidRead, uidUnread] } })).toBe(0);
      });

      test('grantIdFor finds the grant an account gave a client, and nothing once it is revoked or destroyed', async () => {
        const grants = store.adapterFor('Grant');
        const [account, client, other] = [id(), id(), id()];
        const [first, second] = [id(), id()];
        await grants.upsert(first, { jti: first, kind: 'Grant', accountId: account, clientId: client }, 60);
        await grants.upsert(second, { jti: second, kind: 'Grant', accountId: account, clientId: other }, 60);
        expect(await store.grantIdFor(account, client)).toBe(first);
        expect(await store.grantIdFor(account, id())).toBeUndefined();
        expect((await store.grantsOf(account)).map((g) => g.id).sort()).toEqual([first, second].sort());
        expect(await store.grantsOf(account, client)).toEqual([{ id: first, payload: { jti: first, kind: 'Grant', accountId: account, clientId: client } }]);

        await store.revokeGrant(first);
        expect(await store.grantIdFor(account, client)).toBeUndefined();
        await withRequestMemo(async () => {
          expect(await store.grantIdFor(account, other)).toBe(second);
          await grants.destroy(second);
        });
        expect(await store.grantIdFor(account, other)).toBeUndefined();
        expect(await store.grantsOf(account)).toEqual([]);
      });

      test('revokeAccount and endOtherSessions take the copies with them', async () => {
        const sessions = store.adapterFor('Session');
        const [account, keep, end, keepUid, endUid, grant, client] = [id(), id(), id(), id(), id(), id(), id()];
        await sessions.upsert(keep, { jti: keep, kind: 'Session', uid: keepUid, accountId: account }, 60);
        await sessions.upsert(end, { jti: end, kind: 'Session', uid: endUid, accountId: account }, 60);
        await store.adapterFor('Grant').upsert(grant, { jti: grant, kind: 'Grant', accountId: account, clientId: client }, 60);
        await store.endOtherSessions(account, keep);
        expect(await sessions.findByUid(keepUid)).toMatchObject({ jti: keep });
        expect(await sessions.find(keep)).toMatchObject({ jti: keep });
        expect(await sessions.findByUid(endUid)).toBeUndefined();
        await store.revokeAccount(account);
        expect(await sessions.findByUid(keepUid)).toBeUndefined();
        expect(await store.grantIdFor(account, client)).toBeUndefined();
      });

      test('an id that is some other document of the collection (a copy, a consumption mark) is not an artifact', async () => {
        const sessions = store.adapterFor('Session');
        const [key, uid] = [id(), id()];
        await sessions.upsert(key, { jti: key, kind: 'Session', uid }, 60);
        expect(await sessions.find(`uid:${uid}`)).toBeUndefined();
        const codes = store.adapterFor('AuthorizationCode');
        const code = id();
        await codes.upsert(code, { jti: code, kind: 'AuthorizationCode' }, 60);
        await codes.consume(code);
        expect(await codes.find(`consumed:${code}`)).toBeUndefined();
        await expect(codes.consume(`consumed:${code}`)).rejects.toBeInstanceOf(errors.InvalidGrant);
      });
    });

    describe('token ids', () => {
      test('an id with the length of another model\'s tokens is not looked up as this model', async () => {
        const lengths = { AccessToken: 44, ClientCredentials: 45, RefreshToken: 46 };
        for (const [model, length] of Object.entries(lengths)) {
          for (const [asModel, asLength] of Object.entries(lengths)) {
            const key = 'x'.repeat(asLength - 8) + randomUUID().slice(0, 8);
            await store.adapterFor(model).upsert(key, { jti: key, kind: model }, 60);
            expect([model, asModel, Boolean(await store.adapterFor(model).find(key))]).toEqual([model, asModel, length === asLength]);
          }
          // Ids from before (43 characters for every model) are still found.
          const legacy = 'l'.repeat(35) + randomUUID().slice(0, 8);
          await store.adapterFor(model).upsert(legacy, { jti: legacy, kind: model }, 60);
          expect(await store.adapterFor(model).find(legacy)).toMatchObject({ jti: legacy });
        }
        expect([44, 45, 46].map((n) => opaqueTokenBits(Object.keys(lengths)[n - 44]!) / 6)).toEqual([44, 45, 46]);
      });
    });

    describe('revokeAccount', () => {
      test('removes the sessions, grants and tokens of one account and nobody else', async () => {
        const [mine, theirs] = [id(), id()];
        const models = ['Session', 'Grant', 'AccessToken', 'RefreshToken'];
        const keys = new Map(models.map((m) => [m, { mine: id(), theirs: id() }]));
        for (const [model, k] of keys) {
          await store.adapterFor(model).upsert(k.mine, { jti: k.mine, accountId: mine }, 60);
          await store.adapterFor(model).upsert(k.theirs, { jti: k.theirs, accountId: theirs }, 60);
        }
        await store.revokeAccount(mine);
        for (const [model, k] of keys) {
          expect(await store.adapterFor(model).find(k.mine)).toBeUndefined();
          expect(await store.adapterFor(model).find(k.theirs)).toMatchObject({ accountId: theirs });
        }
      });
    });

    describe('consume', () => {
      test('marks the artifact consumed with epoch seconds', async () => {
        const adapter = store.adapterFor('AuthorizationCode');
        const key = id();
        await adapter.upsert(key, { jti: key, kind: 'AuthorizationCode', grantId: id() }, 60);
        const before = Math.floor(Date.now() / 1000);
        await adapter.consume(key);
        const found = await adapter.find(key);
        expect(typeof found?.consumed).toBe('number');
        expect(found!.consumed).toBeGreaterThanOrEqual(before);
        expect(found!.consumed).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
      });

      test('a second consume rejects with InvalidGrant', async () => {
        const adapter = store.adapterFor('RefreshToken');
        const key = id();
        await adapter.upsert(key, { jti: key, kind: 'RefreshToken', grantId: id() }, 60);
        await adapter.consume(key);
        const second = await adapter.consume(key).then(() => 'fulfilled', (error: unknown) => error);
        expect(second).toBeInstanceOf(errors.InvalidGrant);
      });

      test('of 20 concurrent consumers of one code exactly one wins', async () => {
        const adapter = store.adapterFor('AuthorizationCode');
        const [key, grantId, bystander] = [id(), id(), id()];
        await adapter.upsert(key, { jti: key, kind: 'AuthorizationCode', grantId }, 60);
        await store.adapterFor('Grant').upsert(grantId, { jti: grantId, kind: 'Grant' }, 60);
        await store.adapterFor('AccessToken').upsert(bystander, { jti: bystander, kind: 'AccessToken', grantId }, 60);
        const results = await Promise.allSettled(Array.from({ length: 20 }, () => adapter.consume(key)));
        const fulfilled = results.filter((r) => r.status === 'fulfilled');
        const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
        expect(fulfilled).toHaveLength(1);
        expect(rejected).toHaveLength(19);
        for (const r of rejected) expect(r.reason).toBeInstanceOf(errors.InvalidGrant);
        // The losers were replays: the grant and everything issued under it are revoked.
        expect(await store.adapterFor('Grant').find(grantId)).toBeUndefined();
        expect(await store.adapterFor('AccessToken').find(bystander)).toBeUndefined();
        expect(await adapter.find(key)).toBeUndefined();
      });

      test('concurrent redemptions in requests of their own (each finds the code, then consumes it): one wins', async () => {
        const adapter = store.adapterFor('AuthorizationCode');
        const [key, grantId] = [id(), id()];
        await adapter.upsert(key, { jti: key, kind: 'AuthorizationCode', grantId }, 60);
        await store.adapterFor('Grant').upsert(grantId, { jti: grantId, kind: 'Grant' }, 60);
        const results = await Promise.allSettled(Array.from({ length: 10 }, () => withRequestMemo(async () => {
          expect(await adapter.find(key)).toMatchObject({ jti: key });
          await adapter.consume(key);
        })));
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expect(await store.adapterFor('Grant').find(grantId)).toBeUndefined();
      });

      test('a consume that loses a race on a code without a grant only refuses', async () => {
        const adapter = store.adapterFor('AuthorizationCode');
        const key = id();
        await adapter.upsert(key, { jti: key, kind: 'AuthorizationCode' }, 60);
        const results = await Promise.allSettled([adapter.consume(key), adapter.consume(key)]);
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expect(typeof (await adapter.find(key))?.consumed).toBe('number');
      });

      test('consume of a missing id rejects with InvalidGrant', async () => {
        const outcome = await store.adapterFor('AuthorizationCode').consume(id()).then(() => 'fulfilled', (e: unknown) => e);
        expect(outcome).toBeInstanceOf(errors.InvalidGrant);
      });
    });

    describe('removal', () => {
      test('destroy removes the artifact', async () => {
        const adapter = store.adapterFor('Interaction');
        const key = id();
        await adapter.upsert(key, { jti: key, kind: 'Interaction' }, 60);
        await adapter.destroy(key);
        expect(await adapter.find(key)).toBeUndefined();
      });

      test('revokeByGrantId removes the grant\'s artifacts of that model and nothing else', async () => {
        const [revoked, kept] = [id(), id()];
        for (const model of ['AccessToken', 'RefreshToken', 'AuthorizationCode']) {
          const adapter = store.adapterFor(model);
          const ids = { revokedA: id(), revokedB: id(), kept: id() };
          await adapter.upsert(ids.revokedA, { jti: ids.revokedA, kind: model, grantId: revoked }, 60);
          await adapter.upsert(ids.revokedB, { jti: ids.revokedB, kind: model, grantId: revoked }, 60);
          await adapter.upsert(ids.kept, { jti: ids.kept, kind: model, grantId: kept }, 60);

          await adapter.revokeByGrantId(revoked);
          expect(await adapter.find(ids.revokedA)).toBeUndefined();
          expect(await adapter.find(ids.revokedB)).toBeUndefined();
          expect(await adapter.find(ids.kept)).toEqual({ jti: ids.kept, kind: model, grantId: kept });
          expect(await store.collection(model).countDocuments({ 'payload.grantId': revoked })).toBe(0);
        }
      });

      test('sweepExpired deletes expired documents and leaves live ones', async () => {
        const adapter = store.adapterFor('AccessToken');
        const grantId = id();
        const [expired, live, forever] = [id(), id(), id()];
        await adapter.upsert(expired, { jti: expired, kind: 'AccessToken', grantId }, 1);
        await adapter.upsert(live, { jti: live, kind: 'AccessToken', grantId }, 3600);
        await adapter.upsert(forever, { jti: forever, kind: 'AccessToken', grantId });
        await sleep(1200);

        const removed = await store.sweepExpired();
        expect(removed).toBeGreaterThanOrEqual(1);
        const raw = store.collection('AccessToken');
        expect(await raw.countDocuments({ _id: expired })).toBe(0);
        expect(await raw.countDocuments({ 'payload.grantId': grantId })).toBe(2);
        expect(await adapter.find(live)).toBeDefined();
        expect(await adapter.find(forever)).toBeDefined();
      });
    });

    describe('indexes and models', () => {
      test('ensureIndexes created the lookup and expiry indexes', async () => {
        for (const model of ['AccessToken', 'RefreshToken', 'AuthorizationCode']) {
          expect(await indexKeys(store, model)).toContainEqual({ 'payload.grantId': 1 });
        }
        for (const model of ['AccessToken', 'RefreshToken', 'Session', 'Grant']) {
          expect(await indexKeys(store, model)).toContainEqual({ 'payload.accountId': 1 });
        }
        expect(await indexKeys(store, 'Session')).toContainEqual({ 'payload.uid': 1 });
        expect(await indexKeys(store, 'DeviceCode')).toContainEqual({ 'payload.userCode': 1 });
        for (const model of MODEL_NAMES) {
          expect(await indexKeys(store, model)).toContainEqual({ expiresAt: 1 });
        }
      });

      test.each([...MODEL_NAMES])('%s artifacts round-trip', async (model) => {
        const adapter = store.adapterFor(model);
        const key = id();
        const payload: AdapterPayload = { jti: key, kind: model, iat: 1_700_000_000, exp: 1_700_000_060, extra: { nested: [1, 'two'] } };
        await adapter.upsert(key, payload, 60);
        expect(await adapter.find(key)).toEqual(payload);
        await adapter.destroy(key);
        expect(await adapter.find(key)).toBeUndefined();
      });
    });
  });
}
