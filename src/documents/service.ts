/**
 * Document commands. Every change goes through DocumentChanges.change() (changes.ts): read,
 * check the caller's access and If-Match, then commit a new version, claimed so that only one
 * writer produces it, with its audit event in the same write (audit-outbox.ts). A delete only
 * marks the document, which is gone for every read from then on, and the outbox removes it.
 * Shares are changes too (shares.ts).
 */
import type { Readable } from 'node:stream';
import type { Collection, Connection } from 'mongoose';
import type { AccountService } from '../accounts/service.ts';
import { AuditLog, type AuditEvent } from '../audit/log.ts';
import type { Logger } from '../observability/logger.ts';
import { uuidv7 } from '../ids.ts';
import { AuditOutbox } from './audit-outbox.ts';
import { auditEvent, DocumentChanges, forbidden, preconditionFailed, SYSTEM, type RequestInfo, type Visible } from './changes.ts';
import { isDuplicateKey, VersionClaims } from './claims.ts';
import { ifMatchSatisfied } from './conditions.ts';
import { DocumentFiles, type FileUpload } from './files.ts';
import { fingerprintOf, IdempotencyKeys, inUse, keyIdFor } from './idempotency.ts';
import { ApiProblem } from './problem.ts';
import { aclOf, type DocumentRecord, type FileRecord, type ShareRecord, type ShareRole } from './model.ts';
import { accessOf, callerPrincipal, isAdmin, may, type Action } from './policy.ts';
import { etagOf } from './presenter.ts';
import { DocumentShares } from './shares.ts';
import type { Caller } from './token.ts';

export type { RequestInfo, Visible } from './changes.ts';

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

export interface DocumentServiceOptions {
  /**
   * How long the database may spend on one list query (maxTimeMS) before it stops it: a title
   * search scans every document the caller can see, and would otherwise run on after the
   * request gave up. Default 5000.
   */
  listTimeMs?: number;
}

/** The relay leaves events this young to the request that wrote them. */
const RELAY_GRACE_MS = 10_000;
const DEFAULT_LIST_TIME_MS = 5_000;

const escapeRegex = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

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

export class DocumentService {
  private readonly documents: Collection<DocumentRecord>;
  private readonly keys: IdempotencyKeys;
  private readonly outbox: AuditOutbox;
  private readonly changes: DocumentChanges;
  private readonly shares: DocumentShares;
  private readonly files: DocumentFiles;
  private readonly logger: Logger;
  private readonly listTimeMs: number;

  constructor(
    connection: Connection, accounts: AccountService, logger: Logger, audit = new AuditLog(connection, logger),
    options: DocumentServiceOptions = {},
  ) {
    this.documents = connection.collection<DocumentRecord>('documents');
    const claims = new VersionClaims(connection);
    this.keys = new IdempotencyKeys(connection);
    this.files = new DocumentFiles(connection);
    this.logger = logger;
    this.listTimeMs = options.listTimeMs ?? DEFAULT_LIST_TIME_MS;
    this.outbox = new AuditOutbox({
      documents: this.documents, claims, audit, logger, removeFiles: (id) => this.files.removeAll(id),
    });
    this.changes = new DocumentChanges({ documents: this.documents, claims, outbox: this.outbox });
    this.shares = new DocumentShares({ documents: this.documents, accounts, changes: this.changes });
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
      .maxTimeMS(this.listTimeMs)
      .toArray();
    const page = docs.slice(0, query.limit);
    return {
      items: page.map((doc) => ({ doc: { ...doc, content: '' }, access: accessOf(caller, doc)! })),
      next: docs.length > query.limit ? page.at(-1)!._id : undefined,
    };
  }

  /** The document with the caller's access to it; 404 when it does not exist or is not visible. */
  async get(caller: Caller, id: string): Promise<Visible> {
    return this.changes.load(caller, id);
  }

  async update(caller: Caller, id: string, patch: DocumentPatch, ifMatch: string | undefined, info: RequestInfo): Promise<Visible> {
    const event = auditEvent(caller, 'document.update', id, info);
    const { after, access } = await this.changes.change(caller, id, 'update', ifMatch, () => {
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
    await this.changes.change(caller, id, 'delete', ifMatch, () => ({ deletedAt: new Date() }), auditEvent(caller, 'document.delete', id, info));
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
      const { before, after, access: finalAccess } = await this.changes.change(caller, id, 'update', ifMatch, () => ({ file }), event);
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

  /** Only for those who may manage the document's shares. */
  listShares(caller: Caller, id: string): Promise<ShareRecord[]> {
    return this.shares.list(caller, id);
  }

  /** Adds or re-roles a share by email; an email without an account gets a pending share (shares.ts). */
  addShare(caller: Caller, id: string, email: string, role: ShareRole, info: RequestInfo): Promise<{ share: ShareRecord; created: boolean }> {
    return this.shares.add(caller, id, email, role, info);
  }

  removeShare(caller: Caller, id: string, userId: string, info: RequestInfo): Promise<void> {
    return this.shares.remove(caller, id, userId, info);
  }

  /** Turns pending shares for this email into shares with the new account; returns how many documents had one. */
  claimPendingShares(email: string, accountId: string): Promise<number> {
    return this.shares.claimPending(email, accountId);
  }

  /**
   * For erasing an account (src/accounts/erase.ts): deletes the documents it owns, files
   * included, or with `transferTo` makes that account their owner, and takes it out of every
   * share. Each document changes as the next version with its own audit event by `actor` (an
   * operator of the admin CLI: `ip` is "cli"); run again after a failure half-way, it finishes
   * what is left.
   */
  async releaseAccount(accountId: string, actor: AuditEvent['actor'], transferTo?: string): Promise<{ deleted: number; transferred: number; unshared: number }> {
    const counts = { deleted: 0, transferred: 0, unshared: 0 };
    const event = (action: string, id: string, details: AuditEvent['details']) =>
      AuditLog.event({ actor, action, target: id, outcome: 'success', ip: 'cli', requestId: null, details });
    // The acl index holds the owner and every share (aclOf).
    const docs = await this.documents.find({ acl: `user:${accountId}` }, { projection: { owner: 1, deletedAt: 1 } }).toArray();
    for (const { _id, owner, deletedAt } of docs) {
      if (owner.type !== 'user' || owner.id !== accountId) {
        const removed = await this.systemChange(_id, 'share', (doc) => {
          const shares = doc.shares.filter((s) => s.userId !== accountId);
          return { shares, acl: aclOf(doc.owner, shares) };
        }, event('document.share.remove', _id, { user: accountId }));
        if (removed) counts.unshared += 1;
        continue;
      }
      if (transferTo && !deletedAt) {
        const next = { type: 'user' as const, id: transferTo };
        const moved = await this.systemChange(_id, 'share', (doc) => {
          const shares = doc.shares.filter((s) => s.userId !== transferTo && s.userId !== accountId);
          return { owner: next, shares, acl: aclOf(next, shares) };
        }, event('document.transfer', _id, { from: accountId, to: transferTo }));
        if (moved) counts.transferred += 1;
        else await this.finishDeletion(_id); // deleted meanwhile
        continue;
      }
      if (!deletedAt) await this.systemChange(_id, 'delete', () => ({ deletedAt: new Date() }), event('document.delete', _id, { account_erased: accountId }));
      await this.finishDeletion(_id);
      counts.deleted += 1;
    }
    return counts;
  }

  /** A change on nobody's behalf; false when the document is gone or deleted. */
  private async systemChange(id: string, action: Action, mutate: (doc: DocumentRecord) => Partial<DocumentRecord>, event: AuditEvent): Promise<boolean> {
    try {
      await this.changes.change(SYSTEM, id, action, undefined, mutate, event);
      return true;
    } catch (error) {
      if (error instanceof ApiProblem && error.status === 404) return false;
      throw error;
    }
  }

  /** What the outbox does for a deleted document, done now, and without leaving a tombstone. */
  private async finishDeletion(id: string): Promise<void> {
    await this.outbox.finish(id);
    await this.files.removeAll(id);
    const left = await this.documents.findOne({ _id: id }, { projection: { deletedAt: 1 } });
    if (left?.deletedAt) await this.documents.deleteOne({ _id: id });
  }
}
