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
 * Two server families are supported on purpose. Real MongoDB removes expired documents with TTL
 * indexes; FerretDB v1 has none, so `ArtifactStore.sweepExpired` deletes them periodically. Either
 * way nothing expired is ever returned, because TTL deletion is lazy even on MongoDB.
 *
 * Secondary keys (a Session's uid, a DeviceCode's userCode, a Grant's account and client) also get
 * a pointer document in `oidc_lookup` keyed by `_id`, because FerretDB v1 answers only `_id`
 * queries from its indexes and would scan the whole collection for `payload.uid`. Real MongoDB
 * uses either path in O(log n).
 *
 * Consumption is decided by inserting `{_id: "<model>:<id>"}` into `oidc_consumed`: a unique-key
 * insert is atomic on every backend, while a conditional update is not atomic on FerretDB v1.
 */
import mongoose, { type Collection, type Connection } from 'mongoose';
import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';

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
const RESAVED = new Set<string>(['Session', 'Interaction', 'Grant', 'Client']);

/** Secondary keys that get an `_id`-keyed pointer; their values never change for an artifact. */
const SECONDARY_KEYS: Record<string, 'uid' | 'userCode'> = { Session: 'uid', DeviceCode: 'userCode' };

/** The pointer to the one grant an account has given a client (see ArtifactStore.grantIdFor). */
const grantPointer = (accountId: string, clientId: string) => `Grant:${JSON.stringify([accountId, clientId])}`;

interface LookupDocument { _id: string; id: string; expiresAt?: Date }

interface ArtifactDocument {
  _id: string;
  payload: AdapterPayload;
  expiresAt?: Date;
}

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

function isLive(doc: ArtifactDocument | null): doc is ArtifactDocument {
  return doc !== null && (doc.expiresAt === undefined || doc.expiresAt.getTime() > Date.now());
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
  forget(id: string): void {
    this.entries.delete(id);
  }
}

/** Owns the collections and their maintenance; adapters are thin views onto it. */
export class ArtifactStore {
  readonly connection: Connection;
  /** True when the server enforces TTL indexes itself (real MongoDB). */
  ttlIndexes = false;
  readonly clientCache: ClientCache;

  constructor(connection: Connection, options: { clientCacheSeconds?: number } = {}) {
    this.connection = connection;
    this.clientCache = new ClientCache((options.clientCacheSeconds ?? 0) * 1000);
  }

  collection(model: string): Collection<ArtifactDocument> {
    return this.connection.collection<ArtifactDocument>(collectionName(model));
  }

  get consumed(): Collection<{ _id: string; at: Date; expiresAt?: Date }> {
    return this.connection.collection('oidc_consumed');
  }

  get lookups(): Collection<LookupDocument> {
    return this.connection.collection('oidc_lookup');
  }

  /**
   * Run once at start-up (never per request). Detects TTL support by trying it. Covers every
   * collection with expiring documents: the models' plus `oidc_consumed` and `oidc_lookup`.
   */
  async ensureIndexes(): Promise<void> {
    this.ttlIndexes = true;
    for (const model of [...MODEL_NAMES, 'consumed', 'lookup']) {
      const collection = this.collection(model);
      if (GRANTABLE.has(model)) await collection.createIndex({ 'payload.grantId': 1 });
      if (GRANTABLE.has(model) || model === 'Session' || model === 'Grant') {
        await collection.createIndex({ 'payload.accountId': 1 });
      }
      if (model === 'Session') await collection.createIndex({ 'payload.uid': 1 });
      if (model === 'DeviceCode') await collection.createIndex({ 'payload.userCode': 1 });
      if (this.ttlIndexes) {
        try {
          await collection.createIndex({ expiresAt: 1 }, { expireAfterSeconds: 0, name: 'expiresAt_ttl' });
          continue;
        } catch {
          this.ttlIndexes = false;
        }
      }
      await collection.createIndex({ expiresAt: 1 }, { name: 'expiresAt_sweep' });
    }
  }

  /** Deletes expired artifacts; needed where TTL indexes are not enforced. Returns the count. */
  async sweepExpired(now = new Date()): Promise<number> {
    let removed = 0;
    for (const model of [...MODEL_NAMES, 'consumed', 'lookup']) {
      const collection = this.collection(model);
      const result = await collection.deleteMany({ expiresAt: { $lt: now } });
      removed += result.deletedCount;
    }
    return removed;
  }

  /** Starts the periodic sweep when the server lacks TTL indexes; returns a stop function. */
  startSweeper(intervalSeconds: number, onError: (error: unknown) => void): () => void {
    if (this.ttlIndexes) return () => {};
    const timer = setInterval(() => {
      this.sweepExpired().catch(onError);
    }, intervalSeconds * 1000);
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * The grant this account gave this client, if it still exists: consent given in one session
   * holds in the next. A grant written before pointers existed is not found (consent is asked
   * once more) rather than paid for with a scan of every grant.
   */
  async grantIdFor(accountId: string, clientId: string): Promise<string | undefined> {
    const pointer = await this.lookups.findOne({ _id: grantPointer(accountId, clientId) });
    return pointer && (!pointer.expiresAt || pointer.expiresAt.getTime() > Date.now()) ? pointer.id : undefined;
  }

  /** Deletes a grant and everything issued under it. */
  async revokeGrant(grantId: string): Promise<void> {
    await Promise.all([
      ...[...GRANTABLE].map((model) => this.collection(model).deleteMany({ 'payload.grantId': grantId })),
      this.collection('Grant').deleteOne({ _id: grantId }),
    ]);
  }

  /**
   * Signs an account out everywhere: its sessions, grants and every token issued to it. Used when
   * an account is disabled or its password is changed by an administrator.
   */
  async revokeAccount(accountId: string): Promise<void> {
    await Promise.all(['Session', 'Grant', ...GRANTABLE].map((model) =>
      this.collection(model).deleteMany({ 'payload.accountId': accountId })));
  }

  adapterFor(model: string): MongoAdapter {
    return new MongoAdapter(model, this);
  }
}

export class MongoAdapter implements Adapter {
  private readonly model: string;
  private readonly store: ArtifactStore;
  private readonly collection: Collection<ArtifactDocument>;
  private readonly cache: ClientCache | undefined;

  constructor(model: string, store: ArtifactStore) {
    this.model = model;
    this.store = store;
    this.collection = store.collection(model);
    this.cache = model === 'Client' ? store.clientCache : undefined;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    this.cache?.forget(id);
    const doc: ArtifactDocument = { _id: id, payload: storedPayload(payload) };
    if (typeof expiresIn === 'number' && expiresIn > 0) {
      doc.expiresAt = new Date(Date.now() + expiresIn * 1000);
    }
    // Most artifacts are written once under a fresh id, and a plain insert is much cheaper than
    // an upsert on FerretDB (which implements upsert as a read and a write). The models saved
    // again go straight to the upsert: one command, not a failing insert and then a replace.
    if (RESAVED.has(this.model)) {
      // FerretDB's upsert is a read and then an insert: two first writes of one id (two instances
      // creating the built-in client) both insert, and the loser fails on the unique _id (not as
      // 11000). Once more finds the document the other wrote; a real error fails again.
      await this.collection.replaceOne({ _id: id }, doc, { upsert: true }).catch((error: unknown) => {
        if (!(error instanceof mongoose.mongo.MongoServerError)) throw error;
        return this.collection.replaceOne({ _id: id }, doc, { upsert: true });
      });
    } else {
      try {
        await this.collection.insertOne(doc);
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
        await this.collection.replaceOne({ _id: id }, doc, { upsert: true });
      }
    }
    const key = SECONDARY_KEYS[this.model];
    const value = key ? payload[key] : undefined;
    if (typeof value === 'string') await this.point(`${this.model}:${value}`, id, expiresIn, doc.expiresAt);
    if (this.model === 'Grant' && typeof payload.accountId === 'string' && typeof payload.clientId === 'string') {
      await this.point(grantPointer(payload.accountId, payload.clientId), id, expiresIn, doc.expiresAt);
    }
  }

  /**
   * Keeps the pointer for a secondary key on the artifact. It has to follow a session that
   * oidc-provider re-keys at sign-in (new id, same uid) and outlive a session whose expiry rolls
   * forward on use; rewriting it only when the expiry has moved by a good part of the lifetime
   * keeps that from costing a write on every request.
   */
  private async point(key: string, id: string, expiresIn: number | undefined, expiresAt: Date | undefined): Promise<void> {
    const pointer: LookupDocument = { _id: key, id, ...(expiresAt ? { expiresAt } : {}) };
    try {
      await this.store.lookups.insertOne(pointer);
    } catch (error) {
      if (!isDuplicateKey(error)) throw error;
      const stale: Record<string, unknown>[] = [{ id: { $ne: id } }];
      if (expiresAt && expiresIn) {
        stale.push({ expiresAt: { $lt: new Date(expiresAt.getTime() - Math.min(3600, expiresIn / 4) * 1000) } });
      }
      await this.store.lookups.updateOne({ _id: key, $or: stale }, { $set: pointer });
    }
  }

  private async findBySecondaryKey(key: 'uid' | 'userCode', value: string): Promise<AdapterPayload | undefined> {
    const pointer = await this.store.lookups.findOne({ _id: `${this.model}:${value}` });
    const doc = pointer
      ? await this.collection.findOne({ _id: pointer.id })
      : await this.collection.findOne({ [`payload.${key}`]: value }); // written before pointers existed
    return isLive(doc) && doc.payload[key] === value ? readPayload(doc.payload) : undefined;
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    if (typeof id !== 'string') return undefined;
    const cached = this.cache?.get(id);
    if (cached) return cached.payload;
    const doc = await this.collection.findOne({ _id: id });
    const payload = isLive(doc) ? readPayload(doc.payload) : undefined;
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
    const doc = await this.collection.findOne({ _id: id });
    if (!isLive(doc)) throw new errors.InvalidGrant(`${this.model} not found`);
    const consumedAt = Math.floor(Date.now() / 1000);
    try {
      await this.store.consumed.insertOne({
        _id: `${this.model}:${id}`,
        at: new Date(),
        ...(doc.expiresAt ? { expiresAt: doc.expiresAt } : {}),
      });
    } catch (error) {
      if (!isDuplicateKey(error)) throw error;
      // A second redemption racing the first is a replay like any other: revoke the grant
      // (RFC 6749 4.1.2). Without its Grant, the tokens the winner is issuing die with it.
      if (typeof doc.payload.grantId === 'string') await this.store.revokeGrant(doc.payload.grantId);
      throw new errors.InvalidGrant(`${this.model} already consumed`);
    }
    // Recorded on the artifact too, so a later replay is seen by oidc-provider (which then
    // revokes the whole grant).
    await this.collection.updateOne({ _id: id }, { $set: { 'payload.consumed': consumedAt } });
  }

  async destroy(id: string): Promise<void> {
    this.cache?.forget(id);
    await this.collection.deleteOne({ _id: id });
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    if (typeof grantId !== 'string') return;
    await this.collection.deleteMany({ 'payload.grantId': grantId });
  }
}
