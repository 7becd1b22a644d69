/**
 * oidc-provider storage adapter on MongoDB (through mongoose's connection).
 *
 * Each oidc-provider model gets its own collection `oidc_<model>` holding
 * `{ _id, payload, expiresAt? }`. The adapter contract (see node-oidc-provider's
 * example/my_adapter.js) is:
 *   upsert(id, payload, expiresIn)  store or replace; expiresIn is seconds from now
 *   find(id)                        the payload, or undefined when missing or expired
 *   findByUid(uid)                  Session by its uid
 *   findByUserCode(userCode)        DeviceCode by its user code
 *   consume(id)                     mark as used; must refuse a second consumer
 *   destroy(id)                     remove
 *   revokeByGrantId(grantId)        remove everything issued under a grant
 *
 * Two server families are supported on purpose, told apart once at start-up by trying a TTL index
 * (`ensureIndexes`):
 * - Real MongoDB removes expired documents itself and answers `payload.uid` (and the other
 *   secondary keys) from indexes, so those are plain queries.
 * - FerretDB v1 has no TTL indexes (the expiry sweeper of sweeper.ts runs instead) and answers only
 *   `_id` equality from an index: anything else scans the collection. There a Session (and a
 *   DeviceCode) is also stored as a copy under `_id: "uid:<uid>"` ("userCode:<code>") in its own
 *   collection, written in the same command as the artifact, and a Grant has a pointer
 *   `_id: "for:<account,client>"` beside it. Copies carry `of` (the artifact's id) and pointers
 *   carry no payload, so `find(id)` never returns either.
 * Either way nothing expired is ever returned, because TTL deletion is lazy even on MongoDB.
 *
 * Consumption is decided by one unique key, `_id: "consumed:<id>"`, upserted in the artifact's
 * collection in the same command that marks the artifact: only the upsert that inserts it wins,
 * on FerretDB too (its upsert is a read and then an insert, and the losing insert fails on the
 * unique `_id`), while a conditional update would not be atomic there.
 *
 * Reads are remembered for the rest of the request (src/http/request-memo.ts), and opaque token ids tell
 * their model by their length (token-ids.ts).
 */
import { randomUUID } from 'node:crypto';
import type { Collection, Connection } from 'mongoose';
import type { AdapterPayload } from 'oidc-provider';
import { requestMemo } from '../src/http/request-memo.ts';
import { SecretBox } from '../src/security/secrets.ts';
import { MODEL_NAMES, GRANTABLE, memoKey, grantCopyId, readPayload, isLive, artifactOfCopy, collectionName, ClientCache, type ArtifactDocument, type StoredGrant, type LiveArtifact } from './artifacts.ts';
import { MongoAdapter } from './mongo-adapter.ts';
import { ExpirySweeper, type SweeperOptions } from './sweeper.ts';

export { collectionName, MODEL_NAMES, readPayload, storedPayload, type ArtifactDocument, type LiveArtifact, type ModelName, type StoredGrant } from './artifacts.ts';
export { MongoAdapter } from './mongo-adapter.ts';

/**
 * The expiry sweep as the server runs it (the bench measures the same). Batches of 100 keep a tick
 * near its 50 ms budget on FerretDB (about 0.4 ms a delete); a collection swept to its end waits
 * 5 minutes before its next scan, since learning that nothing more has expired means reading
 * every live document there.
 */
export const SWEEP_SETTINGS = { batchSize: 100, revisitMs: 5 * 60_000 } as const;

/** Owns the collections and their maintenance; adapters are thin views onto it. */
export class ArtifactStore {
  readonly connection: Connection;
  /** True when the server enforces TTL indexes itself (real MongoDB). */
  ttlIndexes = false;
  /**
   * True when secondary keys are queried through the server's indexes (real MongoDB); false when
   * they are kept as copies and pointers under `_id` (FerretDB v1). Decided with ttlIndexes.
   */
  indexedKeys = false;
  readonly clientCache: ClientCache;
  private readonly forceIndexedKeys: boolean | undefined;
  private readonly sessionsEndedListeners: ((sessions: LiveArtifact[]) => Promise<void> | void)[] = [];

  /** Seals client secrets at rest (SECRETS_KEY); without keys they are stored as given. */
  readonly secrets: SecretBox;

  /** `indexedKeys` overrides the detection (the adapter contract runs both ways on FerretDB). */
  constructor(connection: Connection, options: { clientCacheSeconds?: number; indexedKeys?: boolean; secrets?: SecretBox } = {}) {
    this.connection = connection;
    this.secrets = options.secrets ?? new SecretBox(undefined);
    this.clientCache = new ClientCache((options.clientCacheSeconds ?? 0) * 1000);
    this.forceIndexedKeys = options.indexedKeys;
  }

  collection(model: string): Collection<ArtifactDocument> {
    return this.connection.collection<ArtifactDocument>(collectionName(model));
  }

  /**
   * Run once at start-up (never per request). Detects TTL support on FerretDB by trying it. Covers every
   * collection with expiring documents. (The `oidc_lookup` pointers and `oidc_consumed` markers of
   * earlier versions are carried over and dropped by migrations 001 and 002.)
   */
  async ensureIndexes(): Promise<void> {
    // Every instance must choose the same layout, so the choice rests on what the server is, not
    // on whether an index build happened to fail: only FerretDB may lack TTL indexes, and any
    // other failure is an error.
    const ferretdb = 'ferretdbVersion' in (await this.connection.db!.admin().command({ buildInfo: 1 }));
    this.indexedKeys = this.forceIndexedKeys ?? !ferretdb;
    this.ttlIndexes = true;
    for (const model of MODEL_NAMES) {
      const collection = this.collection(model);
      if (GRANTABLE.has(model)) await collection.createIndex({ 'payload.grantId': 1 });
      if (GRANTABLE.has(model) || model === 'Session' || model === 'Grant') {
        await collection.createIndex({ 'payload.accountId': 1 });
      }
      if (model === 'Grant') await collection.createIndex({ 'payload.accountId': 1, 'payload.clientId': 1 });
      if (model === 'Session') await collection.createIndex({ 'payload.uid': 1 });
      if (model === 'DeviceCode') await collection.createIndex({ 'payload.userCode': 1 });
      if (this.ttlIndexes) {
        try {
          await collection.createIndex({ expiresAt: 1 }, { expireAfterSeconds: 0, name: 'expiresAt_ttl' });
          continue;
        } catch (error) {
          if (!ferretdb) throw error;
          this.ttlIndexes = false;
        }
      }
      await collection.createIndex({ expiresAt: 1 }, { name: 'expiresAt_sweep' });
    }
  }

  private sweeper(options: Partial<SweeperOptions> = {}): ExpirySweeper {
    return new ExpirySweeper({
      collections: () => MODEL_NAMES.map((model) => this.collection(model) as unknown as Collection),
      locks: this.connection.collection('locks'),
      owner: randomUUID(),
      ...options,
    });
  }

  /** Deletes everything expired now, in one unbudgeted pass (tests and tools). Returns the count. */
  async sweepExpired(now = new Date()): Promise<number> {
    const sweeper = this.sweeper({ graceMs: 0, budgetMs: Number.POSITIVE_INFINITY, now: () => now.getTime() });
    try {
      return (await sweeper.tick()).removed;
    } finally {
      await sweeper.release();
    }
  }

  /**
   * Starts the periodic sweep when the server lacks TTL indexes (adapters/sweeper.ts: small
   * batches, a time budget per tick, one instance at a time); returns its stop function.
   */
  startSweeper(intervalSeconds: number, onError: (error: unknown) => void): () => Promise<void> {
    if (this.ttlIndexes) return async () => {};
    return this.sweeper(SWEEP_SETTINGS).start(intervalSeconds, onError);
  }

  /**
   * The grant this account gave this client, if it still exists: consent given in one session
   * holds in the next. oidc-provider reads the grant next, and is answered from what was read
   * here; it still checks the grant's account and client (loadExistingGrant).
   */
  async grantIdFor(accountId: string, clientId: string): Promise<string | undefined> {
    const readAt = requestMemo()?.generation;
    const found = await this.storedGrantFor(accountId, clientId);
    if (found) this.rememberGrant(found, readAt);
    return found?.id;
  }

  /**
   * The same, as stored, for a sign-in that decides in one request what oidc-provider loads in
   * the next (src/interactions/first-consent.ts): handed to rememberGrant there, it spares that
   * request the read. A grant revoked in between still ends the sign-in: the code exchange reads
   * the grant from the database.
   */
  async storedGrantFor(accountId: string, clientId: string): Promise<StoredGrant | undefined> {
    if (this.indexedKeys) {
      const grant = await this.collection('Grant').findOne(
        { 'payload.accountId': accountId, 'payload.clientId': clientId, of: { $exists: false } },
        { sort: { expiresAt: -1 } },
      );
      return isLive(grant) ? { id: grant._id, doc: grant } : undefined;
    }
    const copy = await this.collection('Grant').findOne({ _id: grantCopyId(accountId, clientId) });
    const doc = copy && artifactOfCopy(copy);
    return isLive(doc) ? { id: doc._id, doc } : undefined;
  }

  /** Makes a grant read earlier (see storedGrantFor) known to the rest of this request. */
  rememberGrant(grant: StoredGrant, readAt?: number): void {
    const { doc } = grant;
    // Handed over through an interaction's payload: taken only in the shape it was stored in.
    const dated = doc?.expiresAt === undefined || doc.expiresAt instanceof Date;
    if (doc && dated && doc._id === grant.id && isLive(doc)) requestMemo()?.set(memoKey('Grant', grant.id), doc, readAt);
  }

  /** Deletes a grant (with its copy) and everything issued under it. */
  async revokeGrant(grantId: string): Promise<void> {
    requestMemo()?.forgetAll();
    await Promise.all([
      ...[...GRANTABLE].map((model) => this.collection(model).deleteMany({ 'payload.grantId': grantId })),
      this.adapterFor('Grant').destroy(grantId),
    ]);
  }

  /**
   * Signs an account out everywhere: its sessions, grants and every token issued to it. Used when
   * an account is disabled or its password is changed by an administrator. Copies carry the
   * payload, so they go with their artifacts.
   */
  async revokeAccount(accountId: string): Promise<void> {
    requestMemo()?.forgetAll();
    const ending = await this.sessionsToNotify({ 'payload.accountId': accountId });
    await Promise.all([
      ...['Session', 'Grant', ...GRANTABLE].map((model) => this.collection(model).deleteMany({ 'payload.accountId': accountId })),
      this.endHeldLogins(accountId),
    ]);
    await this.notifySessionsEnded(ending);
  }

  /**
   * Called with the sessions ended by revokeAccount, endOtherSessions and endSession (not with those
   * oidc-provider ends itself, nor with expired ones), after they are deleted: back-channel logout
   * tells their apps. A listener's failure is its own; the sessions stay ended.
   */
  onSessionsEnded(listener: (sessions: LiveArtifact[]) => Promise<void> | void): void {
    this.sessionsEndedListeners.push(listener);
  }

  /** The account's live sessions, without their copies. */
  async sessionsOf(accountId: string): Promise<LiveArtifact[]> {
    const docs = await this.collection('Session').find({ 'payload.accountId': accountId, of: { $exists: false } }).toArray();
    return docs.filter(isLive).map((doc) => ({ id: doc._id, payload: readPayload(doc.payload) }));
  }

  /**
   * Ends one session of the account (an administrator's `user revoke-session`), found by its id
   * or its uid; returns whether there was one. Its tokens stay until their grant is revoked.
   */
  async endSession(accountId: string, sessionId: string): Promise<boolean> {
    requestMemo()?.forgetAll();
    const session = (await this.sessionsOf(accountId)).find(({ id, payload }) => id === sessionId || payload.uid === sessionId);
    if (!session) return false;
    await this.adapterFor('Session').destroy(session.id);
    await this.notifySessionsEnded([session]);
    return true;
  }

  private async sessionsToNotify(filter: Record<string, unknown>): Promise<LiveArtifact[]> {
    if (this.sessionsEndedListeners.length === 0) return [];
    const docs = await this.collection('Session').find({ ...filter, of: { $exists: false } }).toArray();
    return docs.filter(isLive).map((doc) => ({ id: doc._id, payload: readPayload(doc.payload) }));
  }

  private async notifySessionsEnded(sessions: LiveArtifact[]): Promise<void> {
    if (sessions.length === 0) return;
    for (const listener of this.sessionsEndedListeners) {
      try {
        await listener(sessions);
      } catch {
        // The listener reports its own failures (it owns the retries).
      }
    }
  }

  /** The account's live grants (to one client, or to all), without their copies. */
  async grantsOf(accountId: string, clientId?: string): Promise<{ id: string; payload: AdapterPayload }[]> {
    const filter = { 'payload.accountId': accountId, ...(clientId === undefined ? {} : { 'payload.clientId': clientId }), of: { $exists: false } };
    const docs = await this.collection('Grant').find(filter).toArray();
    return docs.filter(isLive).map((doc) => ({ id: doc._id, payload: readPayload(doc.payload) }));
  }

  /**
   * Also the interactions holding the account's login until a consent is answered
   * (src/interactions/first-consent.ts); they are few and short-lived, and the filter scans them on
   * FerretDB.
   */
  private async endHeldLogins(accountId: string): Promise<void> {
    await this.collection('Interaction').deleteMany({ 'payload.result.login.accountId': accountId });
  }

  /** Ends the account's sessions except the one with id `keep` (copies included). */
  async endOtherSessions(accountId: string, keep: string): Promise<void> {
    requestMemo()?.forgetAll();
    const filter = { 'payload.accountId': accountId, 'payload.jti': { $ne: keep } };
    const ending = await this.sessionsToNotify(filter);
    await this.collection('Session').deleteMany(filter);
    await this.notifySessionsEnded(ending);
  }

  adapterFor(model: string): MongoAdapter {
    return new MongoAdapter(model, this);
  }

  /**
   * Client metadata as stored: its secret sealed. oidc-provider needs the secret itself, not a
   * hash (client_secret_jwt signs with it, and RFC 7592 reads return it), so it is encrypted.
   */
  sealedClient(id: string, payload: AdapterPayload): AdapterPayload {
    const secret = payload.client_secret;
    if (typeof secret !== 'string' || SecretBox.isSealed(secret) || !this.secrets.enabled) return payload;
    return { ...payload, client_secret: this.secrets.seal(secret, clientSecretPurpose(id)) };
  }

  openedClient(id: string, payload: AdapterPayload): AdapterPayload {
    const secret = payload.client_secret;
    return typeof secret === 'string' && SecretBox.isSealed(secret) ? { ...payload, client_secret: this.secrets.open(secret, clientSecretPurpose(id)) } : payload;
  }

  /** Seals every client secret stored in the clear or under an older SECRETS_KEY; returns how many. */
  async resealClientSecrets(): Promise<number> {
    let changed = 0;
    for (const doc of await this.collection('Client').find({ 'payload.client_secret': { $exists: true } }).toArray()) {
      const stored = doc.payload.client_secret;
      if (typeof stored !== 'string' || !this.secrets.needsReseal(stored)) continue;
      const plain = this.secrets.open(stored, clientSecretPurpose(doc._id));
      const sealed = this.secrets.seal(plain, clientSecretPurpose(doc._id));
      await this.collection('Client').updateOne({ _id: doc._id, 'payload.client_secret': stored }, { $set: { 'payload.client_secret': sealed } });
      changed += 1;
    }
    this.clientCache.clear();
    return changed;
  }
}

const clientSecretPurpose = (clientId: string) => `client-secret:${clientId}`;
