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
 * Consumption is decided by inserting `{_id: "<model>:<id>"}` into `oidc_consumed`: a unique-key
 * insert is atomic on every backend, while a conditional update is not atomic on FerretDB v1.
 */
import type { Collection, Connection } from 'mongoose';
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

interface ArtifactDocument {
  _id: string;
  payload: AdapterPayload;
  expiresAt?: Date;
}

const DUPLICATE_KEY = 11000;

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === DUPLICATE_KEY;
}

function isLive(doc: ArtifactDocument | null): doc is ArtifactDocument {
  return doc !== null && (doc.expiresAt === undefined || doc.expiresAt.getTime() > Date.now());
}

export function collectionName(model: string): string {
  return `oidc_${model.toLowerCase()}`;
}

/** Owns the collections and their maintenance; adapters are thin views onto it. */
export class ArtifactStore {
  readonly connection: Connection;
  /** True when the server enforces TTL indexes itself (real MongoDB). */
  ttlIndexes = false;

  constructor(connection: Connection) {
    this.connection = connection;
  }

  collection(model: string): Collection<ArtifactDocument> {
    return this.connection.collection<ArtifactDocument>(collectionName(model));
  }

  get consumed(): Collection<{ _id: string; at: Date; expiresAt?: Date }> {
    return this.connection.collection('oidc_consumed');
  }

  /** Run once at start-up (never per request). Detects TTL support by trying it. */
  async ensureIndexes(): Promise<void> {
    this.ttlIndexes = true;
    for (const model of [...MODEL_NAMES, 'consumed']) {
      const collection = model === 'consumed' ? this.consumed : this.collection(model);
      if (GRANTABLE.has(model) || model === 'Session') {
        await collection.createIndex({ 'payload.grantId': 1 });
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
    for (const model of [...MODEL_NAMES, 'consumed']) {
      const collection = model === 'consumed' ? this.consumed : this.collection(model);
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

  adapterFor(model: string): MongoAdapter {
    return new MongoAdapter(model, this);
  }
}

export class MongoAdapter implements Adapter {
  private readonly model: string;
  private readonly store: ArtifactStore;
  private readonly collection: Collection<ArtifactDocument>;

  constructor(model: string, store: ArtifactStore) {
    this.model = model;
    this.store = store;
    this.collection = store.collection(model);
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    const doc: ArtifactDocument = { _id: id, payload };
    if (typeof expiresIn === 'number' && expiresIn > 0) {
      doc.expiresAt = new Date(Date.now() + expiresIn * 1000);
    }
    await this.collection.replaceOne({ _id: id }, doc, { upsert: true });
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    if (typeof id !== 'string') return undefined;
    const doc = await this.collection.findOne({ _id: id });
    return isLive(doc) ? doc.payload : undefined;
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    if (typeof uid !== 'string') return undefined;
    const doc = await this.collection.findOne({ 'payload.uid': uid });
    return isLive(doc) ? doc.payload : undefined;
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    if (typeof userCode !== 'string') return undefined;
    const doc = await this.collection.findOne({ 'payload.userCode': userCode });
    return isLive(doc) ? doc.payload : undefined;
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
      if (isDuplicateKey(error)) throw new errors.InvalidGrant(`${this.model} already consumed`);
      throw error;
    }
    // Recorded on the artifact too, so a later replay is seen by oidc-provider (which then
    // revokes the whole grant).
    await this.collection.updateOne({ _id: id }, { $set: { 'payload.consumed': consumedAt } });
  }

  async destroy(id: string): Promise<void> {
    await this.collection.deleteOne({ _id: id });
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    if (typeof grantId !== 'string') return;
    await this.collection.deleteMany({ 'payload.grantId': grantId });
  }
}
