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
import mongoose, { type Collection, type Connection } from 'mongoose';
import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';
import { requestMemo } from '../src/http/request-memo.ts';
import { SecretBox } from '../src/security/secrets.ts';
import { ExpirySweeper, type SweeperOptions } from './sweeper.ts';
import { mayBeOf } from './token-ids.ts';

export const MODEL_NAMES = [
  'Session', 'Interaction', 'AccessToken', 'AuthorizationCode', 'RefreshToken', 'ClientCredentials',
  'Client', 'Grant', 'ReplayDetection', 'PushedAuthorizationRequest', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'RegistrationAccessToken', 'InitialAccessToken',
] as const;
export type ModelName = (typeof MODEL_NAMES)[number];

/** Models whose artifacts carry a grantId and must die with their grant. */
const GRANTABLE = new Set<string>([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest',
]);

/** Models oidc-provider saves again under the same id (a session on every sign-in, ...). */
const RESAVED = new Set<string>(['Session', 'Interaction', 'Grant', 'Client', 'DeviceCode']);

/** Secondary keys oidc-provider finds artifacts by; their values never change for an artifact. */
const SECONDARY_KEYS: Record<string, 'uid' | 'userCode'> = { Session: 'uid', DeviceCode: 'userCode' };

const copyId = (key: string, value: string) => `${key}:${value}`;
const memoKey = (model: string, id: string) => `${model}\u0000${id}`;
const consumedId = (id: string) => `consumed:${id}`;
/** The copy of the one grant an account has given a client (see ArtifactStore.grantIdFor). */
const grantCopyId = (accountId: string, clientId: string) => `for:${JSON.stringify([accountId, clientId])}`;

export interface ArtifactDocument {
  _id: string;
  payload: AdapterPayload;
  expiresAt?: Date;
  /** Set on a copy stored under a secondary key: the artifact's own id. */
  of?: string;
}

/** A grant found by its account and client, with its document when it was read whole. */
export interface StoredGrant { id: string; doc?: ArtifactDocument }

/** An artifact read back for administration or notification: its id and payload. */
export interface LiveArtifact { id: string; payload: AdapterPayload }

const DUPLICATE_KEY = 11000;

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === DUPLICATE_KEY;
}

/**
 * oidc-provider uses resource indicators (URLs) as object keys (a Grant's resources, an
 * Interaction's prompt details). MongoDB refuses field names starting with "$" and FerretDB v1 also
 * refuses "." in them, so payload keys are escaped reversibly on the way in and out:
 * "%" -> "%25", "." -> "%2E", a leading "$" -> "%24". Ordinary keys pass through unchanged.
 */
const ESCAPES: Record<string, string> = { '%': '%25', '.': '%2E', $: '%24' };
const UNESCAPES: Record<string, string> = { '%25': '%', '%2E': '.', '%24': '$' };
const escapeKey = (key: string) => key.replace(/[%.]|^\$/g, (c) => ESCAPES[c]!);
const unescapeKey = (key: string) => key.replace(/%(?:25|2E|24)/g, (c) => UNESCAPES[c]!);

function mapKeys(value: unknown, rename: (key: string) => string): unknown {
  if (Array.isArray(value)) return value.map((item) => mapKeys(item, rename));
  if (value === null || typeof value !== 'object' || Object.getPrototypeOf(value) !== Object.prototype) return value;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[rename(key)] = mapKeys(item, rename);
  return out;
}

/** The stored form of a payload (see escapeKey). */
export const storedPayload = (payload: AdapterPayload) => mapKeys(payload, escapeKey) as AdapterPayload;
/** A payload as oidc-provider wrote it. */
export const readPayload = (stored: AdapterPayload) => mapKeys(stored, unescapeKey) as AdapterPayload;

const notExpired = (expiresAt: Date | undefined) => expiresAt === undefined || expiresAt.getTime() > Date.now();

/** A live artifact (not a copy, a pointer or a consumption marker sharing its collection). */
function isLive(doc: ArtifactDocument | null | undefined): doc is ArtifactDocument {
  return doc != null && doc.payload !== undefined && doc.of === undefined && notExpired(doc.expiresAt);
}

/** The artifact a copy stands for (its own id, without the mark of a copy). */
function artifactOfCopy({ of, ...copy }: ArtifactDocument): ArtifactDocument | null {
  return of === undefined ? null : { ...copy, _id: of };
}

export function collectionName(model: string): string {
  return `oidc_${model.toLowerCase()}`;
}

/**
 * Client metadata is read on nearly every protocol request but changes only through the admin
 * CLI, so each instance keeps it for a few seconds. A change made elsewhere (another instance, the
 * CLI) therefore takes up to `ttlMs` to be seen; 0 turns the cache off.
 */
class ClientCache {
  private readonly entries = new Map<string, { payload: AdapterPayload | undefined; until: number }>();
  private readonly ttlMs: number;
  constructor(ttlMs: number) {
    this.ttlMs = ttlMs;
  }
  get(id: string): { payload: AdapterPayload | undefined } | undefined {
    const entry = this.entries.get(id);
    if (!entry || entry.until < Date.now()) return undefined;
    return entry;
  }
  set(id: string, payload: AdapterPayload | undefined): void {
    if (this.ttlMs <= 0) return;
    if (this.entries.size >= 10_000) this.entries.clear();
    this.entries.set(id, { payload, until: Date.now() + this.ttlMs });
  }
  clear(): void {
    this.entries.clear();
  }

  forget(id: string): void {
    this.entries.delete(id);
  }
}

/**
 * FerretDB's upsert is a read and then an insert: two first writes of one id (two instances
 * creating the built-in client) both insert, and the loser fails on the unique _id (not as
 * 11000). Once more finds the document the other wrote; a real error fails again.
 */
async function retryLostUpsert<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (!(error instanceof mongoose.mongo.MongoServerError)) throw error;
    return write();
  }
}

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

export class MongoAdapter implements Adapter {
  private readonly model: string;
  private readonly store: ArtifactStore;
  private readonly collection: Collection<ArtifactDocument>;
  private readonly cache: ClientCache | undefined;
  private readonly secondaryKey: 'uid' | 'userCode' | undefined;

  constructor(model: string, store: ArtifactStore) {
    this.model = model;
    this.store = store;
    this.collection = store.collection(model);
    this.cache = model === 'Client' ? store.clientCache : undefined;
    this.secondaryKey = SECONDARY_KEYS[model];
  }

  private memoKey(id: string): string {
    return memoKey(this.model, id);
  }

  /** `readAt`: the memo's generation when the read that found `doc` began (see RequestMemo). */
  private remember(id: string, doc: ArtifactDocument | null, readAt?: number): void {
    requestMemo()?.set(this.memoKey(id), doc, readAt);
  }

  /** The stored document, from this request's memo when it was read or written already. */
  private async load(id: string): Promise<ArtifactDocument | null> {
    const memo = requestMemo();
    const known = memo?.get<ArtifactDocument>(this.memoKey(id));
    if (known !== undefined) return known;
    const readAt = memo?.generation;
    const doc = await this.collection.findOne({ _id: id });
    memo?.set(this.memoKey(id), doc, readAt);
    return doc;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    this.cache?.forget(id);
    const stored = this.model === 'Client' ? this.store.sealedClient(id, payload) : payload;
    const doc: ArtifactDocument = { _id: id, payload: storedPayload(stored) };
    if (typeof expiresIn === 'number' && expiresIn > 0) {
      doc.expiresAt = new Date(Date.now() + expiresIn * 1000);
    }
    this.remember(id, doc);
    const copy = this.store.indexedKeys ? undefined : this.copyIdOf(payload);
    if (copy) {
      // One command carries both writes.
      await retryLostUpsert(() => this.collection.bulkWrite([
        { replaceOne: { filter: { _id: id }, replacement: doc, upsert: true } },
        { replaceOne: { filter: { _id: copy }, replacement: { ...doc, _id: copy, of: id }, upsert: true } },
      ]));
    } else if (RESAVED.has(this.model)) {
      // Straight to the upsert: one command, not a failing insert and then a replace.
      await retryLostUpsert(() => this.collection.replaceOne({ _id: id }, doc, { upsert: true }));
    } else {
      // Written once under a fresh id: a plain insert is much cheaper than an upsert on FerretDB
      // (which implements upsert as a read and a write).
      try {
        await this.collection.insertOne(doc);
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
        await this.collection.replaceOne({ _id: id }, doc, { upsert: true });
      }
    }
  }

  /** Where secondary keys are kept under `_id`: the id of this artifact's copy, if it has one. */
  private copyIdOf(payload: AdapterPayload | undefined): string | undefined {
    const value = this.secondaryKey ? payload?.[this.secondaryKey] : undefined;
    if (this.secondaryKey && typeof value === 'string') return copyId(this.secondaryKey, value);
    if (this.model === 'Grant' && typeof payload?.accountId === 'string' && typeof payload.clientId === 'string') {
      return grantCopyId(payload.accountId, payload.clientId);
    }
    return undefined;
  }

  private async findBySecondaryKey(key: 'uid' | 'userCode', value: string): Promise<AdapterPayload | undefined> {
    const readAt = requestMemo()?.generation;
    let doc: ArtifactDocument | null;
    if (this.store.indexedKeys) {
      doc = await this.collection.findOne({ [`payload.${key}`]: value, of: { $exists: false } });
    } else {
      const copy = await this.collection.findOne({ _id: copyId(key, value) });
      doc = copy && artifactOfCopy(copy);
    }
    if (!isLive(doc) || doc.payload[key] !== value) return undefined;
    this.remember(doc._id, doc, readAt);
    return readPayload(doc.payload);
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    if (typeof id !== 'string' || !mayBeOf(this.model, id)) return undefined;
    const cached = this.cache?.get(id);
    if (cached) return cached.payload;
    const doc = await this.load(id);
    let payload = isLive(doc) ? readPayload(doc.payload) : undefined;
    if (payload && this.model === 'Client') payload = this.store.openedClient(id, payload);
    this.cache?.set(id, payload);
    return payload;
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    return typeof uid === 'string' ? this.findBySecondaryKey('uid', uid) : undefined;
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    return typeof userCode === 'string' ? this.findBySecondaryKey('userCode', userCode) : undefined;
  }

  async consume(id: string): Promise<void> {
    const doc = await this.load(id);
    if (!isLive(doc)) throw new errors.InvalidGrant(`${this.model} not found`);
    const consumedAt = Math.floor(Date.now() / 1000);
    const marker = { at: new Date(), ...(doc.expiresAt ? { expiresAt: doc.expiresAt } : {}) };
    let won: boolean;
    try {
      // The mark on the artifact lets oidc-provider see a later replay itself (and revoke the grant).
      const result = await this.collection.bulkWrite([
        { updateOne: { filter: { _id: consumedId(id) }, update: { $setOnInsert: marker }, upsert: true } },
        { updateOne: { filter: { _id: id }, update: { $set: { 'payload.consumed': consumedAt } } } },
      ] as mongoose.mongo.AnyBulkWriteOperation<ArtifactDocument>[]);
      won = result.upsertedCount === 1;
    } catch (error) {
      // Losing FerretDB's insert race fails the upsert; anything else is a real error.
      if (!(error instanceof mongoose.mongo.MongoServerError) || !(await this.collection.findOne({ _id: consumedId(id) }))) throw error;
      won = false;
    }
    if (!won) {
      // A second redemption racing the first is a replay like any other: revoke the grant
      // (RFC 6749 4.1.2). Without its Grant, the tokens the winner is issuing die with it.
      if (typeof doc.payload.grantId === 'string') await this.store.revokeGrant(doc.payload.grantId);
      throw new errors.InvalidGrant(`${this.model} already consumed`);
    }
    this.remember(id, { ...doc, payload: { ...doc.payload, consumed: consumedAt } });
  }

  /**
   * The copy goes too, first: a failure between the two deletes then leaves the artifact without
   * its copy (not found by its key: a sign-in or a consent asked again), never a copy without its
   * artifact (which would still be believed). Its id comes from the payload: known when this
   * request read the artifact (a sign-out, a re-keyed session), read first otherwise. The copy is
   * removed even if a newer artifact with the same key has rewritten it meanwhile; that one is
   * then asked for again too, never let through.
   */
  async destroy(id: string): Promise<void> {
    this.cache?.forget(id);
    const known = requestMemo()?.get<ArtifactDocument>(this.memoKey(id));
    this.remember(id, null);
    if (this.store.indexedKeys || (!this.secondaryKey && this.model !== 'Grant')) {
      await this.collection.deleteOne({ _id: id });
      return;
    }
    const doc = known !== undefined ? known : await this.collection.findOne({ _id: id });
    const copy = this.copyIdOf(doc?.payload);
    await this.collection.bulkWrite([...(copy ? [copy] : []), id].map((_id) => ({ deleteOne: { filter: { _id } } })));
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    if (typeof grantId !== 'string') return;
    requestMemo()?.forgetAll();
    await this.collection.deleteMany({ 'payload.grantId': grantId });
  }
}
