/**
 * Idempotency-Key for creating documents (draft-ietf-httpapi-idempotency-key-header). The first
 * request with a key inserts a record holding the id and creation time of the document it will
 * create; every retry with that key (from the same caller, within KEY_LIFETIME_MS) creates that
 * same document, so inserting the document by its unique `_id` is the exactly-once point, and
 * answers as the first request did. The record is written before the document: a failure between
 * the two leaves a record whose retry creates the document, never a document a retry cannot find.
 *
 * Records expire at expiresAt: removed by a TTL index where the server has them (MongoDB),
 * otherwise swept (see sweep); either way an expired record is ignored when read.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Collection, Connection } from 'mongoose';
import { ApiProblem } from './problem.ts';
import { isDuplicateKey } from './claims.ts';
import { PATTERNS } from './schema.ts';
import type { Caller } from './token.ts';

/** How long a key is remembered (published in openapi.ts). */
export const KEY_LIFETIME_MS = 24 * 3_600_000;
/**
 * A record younger than this, taken by another instance, may belong to a request still creating
 * its document: a retry then answers 409. Older, or taken by this instance and no longer running
 * here, the retry completes the creation itself.
 */
const IN_FLIGHT_MS = 10_000;

export interface IdempotencyRecord {
  /** A hash of the operation, the caller (sub and client) and the key. */
  _id: string;
  /** A hash of the request's content: a retry must send the same. */
  fingerprint: string;
  documentId: string;
  createdAt: Date;
  expiresAt: Date;
  /** The process that took the key. */
  instance: string;
}

const KEY = new RegExp(PATTERNS.idempotencyKey, 'u');

/** The key an Idempotency-Key header carries (undefined without one), or a 400 problem. */
export function idempotencyKeyOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  // Several fields are joined with ", " by Node: that never matches, as the draft requires.
  if (!KEY.test(header)) {
    const detail = 'must be one quoted string (RFC 8941) of 1 to 255 printable ASCII characters, such as "8e03978e-40d5-43e8-bc93-6894a57f9324"';
    throw new ApiProblem('bad-request', 400, `The Idempotency-Key header ${detail}.`, {
      errors: [{ parameter: 'Idempotency-Key', detail }],
    });
  }
  return header.slice(1, -1).replace(/\\(["\\])/g, '$1');
}

const sha256 = (value: unknown) => createHash('sha256').update(JSON.stringify(value)).digest('base64url');

/** The record id: keys are the caller's own, so two callers' equal keys never meet. */
export const keyIdFor = (operation: string, caller: Caller, key: string): string =>
  sha256([operation, caller.kind, caller.sub, caller.clientId, key]);

export const fingerprintOf = (content: unknown): string => sha256(content);

export const inUse = () => new ApiProblem('idempotency-key-in-use', 409,
  'A request with this Idempotency-Key is still being processed. Retry it with the same key once that one has finished.',
  { headers: { 'Retry-After': '1' } });

export const reused = () => new ApiProblem('idempotency-key-reused', 422,
  'This Idempotency-Key was already used for a request with different content. Use a new key for a new request.');

/** What the caller must do with a key it holds. */
export type KeyHolding =
  | { kind: 'first'; record: IdempotencyRecord }
  /** An earlier request took the key: complete its creation, or answer as it did. */
  | { kind: 'retry'; record: IdempotencyRecord; mayBeRunning: boolean };

export class IdempotencyKeys {
  private readonly records: Collection<IdempotencyRecord>;
  /** Identifies this process in the records it writes. */
  readonly instance = randomUUID();
  /** Keys of the requests this process is running now, with their fingerprints. */
  private readonly running = new Map<string, string>();
  ttl = false;

  constructor(connection: Connection) {
    this.records = connection.collection<IdempotencyRecord>('document_idempotency_keys');
  }

  async ensureIndexes(): Promise<void> {
    try {
      await this.records.createIndex({ expiresAt: 1 }, { expireAfterSeconds: 0, name: 'expiresAt_ttl' });
      this.ttl = true;
    } catch {
      await this.records.createIndex({ expiresAt: 1 }, { name: 'expiresAt_sweep' });
    }
  }

  /** Deletes expired records; needed where TTL indexes are not enforced. */
  async sweep(now = new Date()): Promise<number> {
    if (this.ttl) return 0;
    return (await this.records.deleteMany({ expiresAt: { $lt: now } })).deletedCount;
  }

  /**
   * Runs `work` as the only request with this key in this process: a concurrent one answers 409
   * (422 if its content differs).
   */
  async exclusively<T>(id: string, fingerprint: string, work: () => Promise<T>): Promise<T> {
    const running = this.running.get(id);
    if (running !== undefined) throw running === fingerprint ? inUse() : reused();
    this.running.set(id, fingerprint);
    try {
      return await work();
    } finally {
      this.running.delete(id);
    }
  }

  /**
   * Takes the key with the proposed document, or returns the record of the earlier request that
   * took it (422 when its content differed). An expired record is replaced.
   */
  async hold(id: string, fingerprint: string, proposal: { documentId: string; createdAt: Date }): Promise<KeyHolding> {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const now = new Date();
      const record: IdempotencyRecord = {
        _id: id, fingerprint, ...proposal, expiresAt: new Date(proposal.createdAt.getTime() + KEY_LIFETIME_MS), instance: this.instance,
      };
      try {
        await this.records.insertOne(record);
        return { kind: 'first', record };
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
      }
      const existing = await this.records.findOne({ _id: id });
      if (!existing) continue; // swept meanwhile
      if (existing.expiresAt.getTime() <= now.getTime()) {
        await this.records.deleteOne({ _id: id, expiresAt: existing.expiresAt });
        continue;
      }
      if (existing.fingerprint !== fingerprint) throw reused();
      const fresh = now.getTime() - existing.createdAt.getTime() < IN_FLIGHT_MS;
      // This process is not running it (see exclusively): if it took the key, it is done with it.
      return { kind: 'retry', record: existing, mayBeRunning: fresh && existing.instance !== this.instance };
    }
    throw inUse();
  }
}
