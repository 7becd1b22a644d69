/**
 * Document commands. Every change goes through `change()`: read, check the caller's access and
 * If-Match, then commit a new version. A commit first claims the version it produces (claims.ts),
 * so only one writer can produce each version: on MongoDB the conditional update would suffice,
 * but FerretDB v1 runs it as a read then a write, and two writers could both succeed. A writer
 * that loses re-reads and tries again (or gets 412 when it sent If-Match). Each change carries
 * its audit event in the same write (audit-outbox.ts); a delete only marks the document, which is
 * gone for every read from then on, and the outbox removes it.
 */
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { setTimeout } from 'node:timers/promises';
import type { Collection, Connection } from 'mongoose';
import type { AccountService } from '../accounts/service.ts';
import { AuditLog, type AuditEvent } from '../audit/log.ts';
import type { Logger } from '../observability/logger.ts';
import { uuidv7 } from '../ids.ts';
import { AuditOutbox } from './audit-outbox.ts';
import { isDuplicateKey, VersionClaims } from './claims.ts';
import { ifMatchSatisfied } from './conditions.ts';
import { DocumentFiles, type FileUpload } from './files.ts';
import { fingerprintOf, IdempotencyKeys, inUse, keyIdFor } from './idempotency.ts';
import { Lanes } from './lanes.ts';
import { ApiProblem, notFound } from './problem.ts';
import { aclOf, type DocumentRecord, type FileRecord, type ShareRecord, type ShareRole } from './model.ts';
import { accessOf, callerPrincipal, isAdmin, may, type Access, type Action } from './policy.ts';
import { etagOf } from './presenter.ts';
import type { Caller } from './token.ts';

export interface DocumentInput {
  title: string;
  content?: string | undefined;
  tags?: string[] | undefined;
}

export type DocumentPatch = Partial<DocumentInput>;

export interface ListQuery {
  limit: number;
  /** Return documents older than this one (the previous page's last id). */
  after?: string | undefined;
  tag?: string | undefined;
  q?: string | undefined;
}

export interface Visible {
  doc: DocumentRecord;
  access: Access;
}

/** Where a change came from, for its audit event. */
export interface RequestInfo {
  ip: string;
  requestId: string | null;
}

/**
 * A writer that loses its claim to another retries, after a jittered backoff, for at most this
 * many attempts and this long: enough for dozens of writers queued on one document.
 */
const MAX_ATTEMPTS = 200;
const MAX_RETRY_MS = 8_000;
const BACKOFF_BASE_MS = 4;
const BACKOFF_CAP_MS = 200;
/** Internal changes made on nobody's behalf (claiming pending shares). */
const SYSTEM = 'system';
type Actor = Caller | typeof SYSTEM;
/** The relay leaves events this young to the request that wrote them. */
const RELAY_GRACE_MS = 10_000;

const escapeRegex = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Full jitter: a random wait up to an exponentially growing, capped bound. */
const backoff = (attempt: number) => Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 10));

function newDocument(caller: Caller, input: DocumentInput, id: string, createdAt: Date): DocumentRecord {
  const owner = caller.kind === 'client'
    ? { type: 'client' as const, id: caller.clientId }
    : { type: 'user' as const, id: caller.sub };
  return {
    _id: id,
    owner,
    title: input.title,
    content: input.content ?? '',
    tags: input.tags ?? [],
    shares: [],
    acl: aclOf(owner, []),
    file: null,
    version: 1,
    createdAt,
    updatedAt: createdAt,
  };
}

function auditEvent(actor: Caller, action: string, target: string, info: RequestInfo): AuditEvent {
  return AuditLog.event({
    actor: { sub: actor.sub, clientId: actor.clientId }, action, target, outcome: 'success', ip: info.ip, requestId: info.requestId,
  });
}

const forbidden = (action: Action) =>
  new ApiProblem('forbidden', 403, `Your access to this document does not allow this (${action}).`);

const preconditionFailed = () =>
  new ApiProblem('precondition-failed', 412, 'The document has changed since the version named in If-Match. Read it again and retry.');

export class DocumentService {
  private readonly documents: Collection<DocumentRecord>;
  private readonly claims: VersionClaims;
  private readonly keys: IdempotencyKeys;
  private readonly outbox: AuditOutbox;
  private readonly lanes = new Lanes();
  private readonly files: DocumentFiles;
  private readonly accounts: AccountService;
  private readonly logger: Logger;

  constructor(connection: Connection, accounts: AccountService, logger: Logger, audit = new AuditLog(connection, logger)) {
    this.documents = connection.collection<DocumentRecord>('documents');
    this.claims = new VersionClaims(connection);
    this.keys = new IdempotencyKeys(connection);
    this.files = new DocumentFiles(connection);
    this.accounts = accounts;
    this.logger = logger;
    this.outbox = new AuditOutbox({
      documents: this.documents, claims: this.claims, audit, logger, removeFiles: (id) => this.files.removeAll(id),
    });
  }

  async ensureIndexes(): Promise<void> {
    await this.documents.createIndex({ acl: 1, _id: -1 });
    await this.documents.createIndex({ 'shares.email': 1 });
    // The audit relay and the tombstone sweep find their documents by these.
    await this.documents.createIndex({ 'pendingAudit.at': 1 });
    await this.documents.createIndex({ tombstoneUntil: 1 });
    await this.files.ensureIndexes();
    await this.keys.ensureIndexes();
  }

  /**
   * Finishes, every intervalSeconds, the changes whose audit events are still pending (a failure
   * between a change and its audit record, or a delete not yet completed), and removes expired
   * tombstones and idempotency keys. Returns a stop function.
   */
  startAuditRelay(intervalSeconds = 15): () => void {
    let running = false;
    const round = () => {
      if (running) return;
      running = true;
      Promise.all([this.relayPendingAudit(), this.outbox.sweepTombstones(), this.keys.sweep()])
        .catch((error: unknown) => this.logger.error({ err: error }, 'relaying pending document audit events failed'))
        .finally(() => { running = false; });
    };
    round();
    const timer = setInterval(round, intervalSeconds * 1000);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** One round of the relay, for changes pending since before `olderThan`; returns how many it finished. */
  relayPendingAudit(olderThan = new Date(Date.now() - RELAY_GRACE_MS)): Promise<number> {
    return this.outbox.relay(olderThan);
  }

  /**
   * Creates a document. With an Idempotency-Key (idempotency.ts), a retry of a request this
   * caller made with that key creates nothing new and gets the first request's answer: the
   * document as it was created, even if it has changed or been deleted since.
   */
  async create(caller: Caller, input: DocumentInput, info: RequestInfo, idempotencyKey?: string): Promise<Visible> {
    if (idempotencyKey === undefined) {
      const now = new Date();
      return this.insert(caller, newDocument(caller, input, uuidv7(now.getTime()), now), info);
    }
    const id = keyIdFor('document.create', caller, idempotencyKey);
    const fingerprint = fingerprintOf([input.title, input.content ?? '', input.tags ?? []]);
    return this.keys.exclusively(id, fingerprint, async () => {
      const now = new Date();
      const held = await this.keys.hold(id, fingerprint, { documentId: uuidv7(now.getTime()), createdAt: now });
      const { record } = held;
      const doc: DocumentRecord = { ...newDocument(caller, input, record.documentId, record.createdAt), idempotentUntil: record.expiresAt };
      const firstAnswer: Visible = { doc, access: 'owner' };
      if (held.kind === 'retry' && held.mayBeRunning) {
        if (await this.documents.countDocuments({ _id: doc._id }, { limit: 1 })) return firstAnswer;
        throw inUse();
      }
      try {
        return await this.insert(caller, doc, info);
      } catch (error) {
        // An earlier attempt created it (its answer may have been lost): it exists, perhaps as
        // a tombstone, and the unique _id kept this attempt from creating it again.
        if (held.kind === 'retry' && isDuplicateKey(error)) return firstAnswer;
        throw error;
      }
    });
  }

  private async insert(caller: Caller, doc: DocumentRecord, info: RequestInfo): Promise<Visible> {
    const event = auditEvent(caller, 'document.create', doc._id, info);
    await this.documents.insertOne({ ...doc, pendingAudit: [event] });
    await this.outbox.finishCreated(doc._id, doc.version, event);
    return { doc, access: 'owner' };
  }

  /** Newest first; `nextCursor` is the id to pass as `after` for the next page, if there is one. */
  async list(caller: Caller, query: ListQuery): Promise<{ items: Visible[]; next: string | undefined }> {
    const filter: Record<string, unknown> = isAdmin(caller) ? {} : { acl: callerPrincipal(caller) };
    filter.deletedAt = { $exists: false };
    if (query.after) filter._id = { $lt: query.after };
    if (query.tag) filter.tags = query.tag;
    if (query.q) filter.title = { $regex: escapeRegex(query.q), $options: 'i' };
    const docs = await this.documents
      .find(filter, { projection: { content: 0, pendingAudit: 0 } })
      .sort({ _id: -1 })
      .limit(query.limit + 1)
      .toArray();
    const page = docs.slice(0, query.limit);
    return {
      items: page.map((doc) => ({ doc: { ...doc, content: '' }, access: accessOf(caller, doc)! })),
      next: docs.length > query.limit ? page.at(-1)!._id : undefined,
    };
  }

  /** The document with the caller's access to it; 404 when it does not exist or is not visible. */
  async get(caller: Caller, id: string): Promise<Visible> {
    return this.load(caller, id);
  }

  private async load(actor: Actor, id: string): Promise<Visible> {
    const doc = await this.documents.findOne({ _id: id });
    const access = doc ? (actor === SYSTEM ? 'admin' : accessOf(actor, doc)) : undefined;
    if (!doc || doc.deletedAt || !access) throw notFound();
    return { doc, access };
  }

  async update(caller: Caller, id: string, patch: DocumentPatch, ifMatch: string | undefined, info: RequestInfo): Promise<Visible> {
    const event = auditEvent(caller, 'document.update', id, info);
    const { after, access } = await this.change(caller, id, 'update', ifMatch, () => {
      const changes: Partial<DocumentRecord> = {};
      if (patch.title !== undefined) changes.title = patch.title;
      if (patch.content !== undefined) changes.content = patch.content;
      if (patch.tags !== undefined) changes.tags = patch.tags;
      return changes;
    }, event);
    return { doc: after, access };
  }

  /**
   * Marks the document deleted, as its next version (so a racing update cannot be half-applied
   * to it); the outbox then removes its files, including one an upload committed meanwhile, and
   * the document.
   */
  async delete(caller: Caller, id: string, ifMatch: string | undefined, info: RequestInfo): Promise<void> {
    await this.change(caller, id, 'delete', ifMatch, () => ({ deletedAt: new Date() }), auditEvent(caller, 'document.delete', id, info));
  }

  /**
   * Stores the upload (files.ts), then points the document at it and deletes the file it
   * replaces.
   */
  async putFile(
    caller: Caller, id: string, upload: FileUpload, maxBytes: number, ifMatch: string | undefined, info: RequestInfo,
  ): Promise<Visible> {
    const { doc, access } = await this.get(caller, id);
    if (!may(access, 'update')) throw forbidden('update');
    if (ifMatch !== undefined && !ifMatchSatisfied(ifMatch, etagOf(doc))) throw preconditionFailed();

    const file = await this.files.store(id, upload, maxBytes);
    try {
      const event = auditEvent(caller, 'document.file.upload', id, info);
      const { before, after, access: finalAccess } = await this.change(caller, id, 'update', ifMatch, () => ({ file }), event);
      if (before.file) await this.files.discard(before.file.gridFsId);
      return { doc: after, access: finalAccess };
    } catch (error) {
      await this.files.discard(file.gridFsId);
      throw error;
    }
  }

  async openFile(caller: Caller, id: string): Promise<{ file: FileRecord; stream: Readable }> {
    const { doc } = await this.get(caller, id);
    const noFile = () => new ApiProblem('not-found', 404, 'This document has no file.');
    if (!doc.file) throw noFile();
    // A replacing upload or a delete may have removed it since the document was read; answer
    // 404 rather than failing once the response has started.
    const stream = await this.files.open(doc.file);
    if (!stream) throw noFile();
    return { file: doc.file, stream };
  }

  async listShares(caller: Caller, id: string): Promise<ShareRecord[]> {
    const { doc, access } = await this.get(caller, id);
    if (!may(access, 'share')) throw forbidden('share');
    return doc.shares;
  }

  /**
   * Shares with the account that has this email, or replaces the role of an existing share.
   * An email without an account gets a pending share under a placeholder id, answered exactly
   * like a real one: the answer never tells whether someone has an account. The share starts
   * working when an account with that email is created (claimPendingShares).
   */
  async addShare(caller: Caller, id: string, email: string, role: ShareRole, info: RequestInfo): Promise<{ share: ShareRecord; created: boolean }> {
    const normalized = email.trim().toLowerCase();
    // Both lookups run whether or not the account exists, so timing tells nothing either.
    const [account, pendingId] = await Promise.all([this.accounts.get(normalized), this.pendingShareId(normalized)]);
    let result: { share: ShareRecord; created: boolean } | undefined;
    await this.change(caller, id, 'share', undefined, (doc) => {
      if (account && doc.owner.type === 'user' && doc.owner.id === account.id) {
        throw new ApiProblem('validation-error', 400, 'The request body is not valid: /email is the owner of this document, who cannot be added to its shares.', {
          errors: [{ detail: 'is the owner of this document', pointer: '/email' }],
        });
      }
      const existing = doc.shares.find((s) => s.email === normalized);
      const share: ShareRecord = existing
        ? { ...existing, role }
        : { userId: account?.id ?? pendingId, email: normalized, role, pending: !account, createdAt: new Date() };
      result = { share, created: !existing };
      const shares = [...doc.shares.filter((s) => s !== existing), share];
      return { shares, acl: aclOf(doc.owner, shares) };
    }, auditEvent(caller, 'document.share.add', id, info));
    return result!;
  }

  /**
   * The placeholder id for an email without an account: the one already used for it on another
   * document, or a new random one. Like an account id it is stable across documents, so comparing
   * answers for several documents tells nothing either.
   */
  private async pendingShareId(email: string): Promise<string> {
    const doc = await this.documents.findOne({ 'shares.email': email }, { projection: { shares: 1 } });
    return doc?.shares.find((s) => s.pending && s.email === email)?.userId ?? randomUUID();
  }

  async removeShare(caller: Caller, id: string, userId: string, info: RequestInfo): Promise<void> {
    await this.change(caller, id, 'share', undefined, (doc) => {
      const shares = doc.shares.filter((s) => s.userId !== userId);
      if (shares.length === doc.shares.length) throw new ApiProblem('not-found', 404, 'This document is not shared with that user.');
      return { shares, acl: aclOf(doc.owner, shares) };
    }, auditEvent(caller, 'document.share.remove', id, info));
  }

  /** Turns pending shares for this email into shares with the new account. */
  async claimPendingShares(email: string, accountId: string): Promise<number> {
    // Matched on shares.email, then filtered here: FerretDB v1 has no $elemMatch on fields.
    const candidates = await this.documents.find({ 'shares.email': email }, { projection: { _id: 1, shares: 1 } }).toArray();
    const docs = candidates.filter((doc) => doc.shares.some((s) => s.pending && s.email === email));
    for (const { _id } of docs) {
      await this.change(SYSTEM, _id, 'share', undefined, (doc) => {
        const shares = doc.shares.map((s) => (s.pending && s.email === email ? { ...s, userId: accountId, pending: false } : s));
        return { shares, acl: aclOf(doc.owner, shares) };
      }).catch((error: unknown) => {
        if (!(error instanceof ApiProblem && error.status === 404)) throw error; // deleted meanwhile
      });
    }
    return docs.length;
  }

  /**
   * Read, authorize, check If-Match, then `write`; again from the top while `write` reports (with
   * undefined) that another writer (in another process, or one that stopped waiting in the
   * document's lane) got there first. With If-Match the next read usually shows the other
   * writer's version, which answers 412; without it the change is re-applied to that version
   * (last writer wins), for at most MAX_ATTEMPTS and, after the first, until `deadline`.
   */
  private async withDocument<T>(
    actor: Actor, id: string, action: Action, ifMatch: string | undefined, deadline: number,
    write: (visible: Visible, attempt: number) => Promise<T | undefined>,
  ): Promise<T> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS && (attempt === 0 || Date.now() < deadline); attempt += 1) {
      const visible = await this.load(actor, id);
      if (!may(visible.access, action)) throw forbidden(action);
      if (ifMatch !== undefined && !ifMatchSatisfied(ifMatch, etagOf(visible.doc))) throw preconditionFailed();
      const result = await write(visible, attempt);
      if (result !== undefined) return result;
      // Lost to another writer, who is usually done within milliseconds: back off with jitter
      // so that writers queued on one document do not keep colliding.
      await setTimeout(backoff(attempt));
    }
    throw new ApiProblem('conflict', 409, 'The document is being changed by other requests; try again.');
  }

  /**
   * Applies `mutate`'s changes as the next version, with the audit event of the change (none
   * for SYSTEM changes), then has the outbox write the event. `mutate` may throw an ApiProblem
   * to refuse.
   */
  private async change(
    actor: Actor, id: string, action: Action, ifMatch: string | undefined,
    mutate: (doc: DocumentRecord) => Partial<DocumentRecord>, event?: AuditEvent,
  ): Promise<{ before: DocumentRecord; after: DocumentRecord; access: Access }> {
    // Waiting in the lane and retrying share one budget. The outbox finishes outside the lane:
    // the next writer need not wait for it.
    const deadline = Date.now() + MAX_RETRY_MS;
    const changed = await this.lanes.run(id, MAX_RETRY_MS, () =>
      this.withDocument(actor, id, action, ifMatch, deadline, async ({ doc, access }, attempt) => {
        const after = await this.commit(doc, mutate(doc), event, attempt % 4 === 3);
        return after && { before: doc, after, access };
      }));
    if (event) await this.outbox.finishQuietly(id, { version: changed.after.version, event });
    return changed;
  }

  /** Writes the next version of `doc`, or returns undefined if another writer got there first. */
  private commit(
    doc: DocumentRecord, changes: Partial<DocumentRecord>, event: AuditEvent | undefined, releaseStale: boolean,
  ): Promise<DocumentRecord | undefined> {
    return this.claims.claimed(doc, async () => {
      const version = doc.version + 1;
      const updatedAt = new Date();
      const $set = { ...changes, version, updatedAt };
      const { matchedCount } = await this.documents.updateOne(
        { _id: doc._id, version: doc.version },
        event ? { $set, $push: { pendingAudit: event } } : { $set },
      );
      return matchedCount === 1 ? { ...doc, ...changes, version, updatedAt } : undefined;
    }, { releaseStale });
  }
}
