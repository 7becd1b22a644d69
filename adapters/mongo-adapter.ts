/**
 * The adapter oidc-provider gets for one model (see mongodb.ts for the contract and the layouts):
 * a thin view onto the store's collection, with the request memo and, for clients, the cache.
 */
import mongoose, { type Collection } from 'mongoose';
import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';
import { requestMemo } from '../src/http/request-memo.ts';
import { RESAVED, SECONDARY_KEYS, copyId, memoKey, consumedId, grantCopyId, isDuplicateKey, storedPayload, readPayload, isLive, artifactOfCopy, ClientCache, retryLostUpsert, type ArtifactDocument } from './artifacts.ts';
import type { ArtifactStore } from './mongodb.ts';
import { mayBeOf } from './token-ids.ts';

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
