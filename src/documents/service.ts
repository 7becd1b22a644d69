/**
 * Document commands. Every change goes through `change()`: read, check the caller's access and
 * If-Match, then commit a new version. A commit first inserts a VersionClaim for the version it
 * produces, so only one writer can produce each version: on MongoDB the conditional update would
 * suffice, but FerretDB v1 runs it as a read then a write, and two writers could both succeed.
 * A writer that loses re-reads and tries again (or gets 412 when it sent If-Match).
 */
import { createHash, randomUUID } from 'node:crypto';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout } from 'node:timers/promises';
import mongoose, { type Collection, type Connection } from 'mongoose';
import type { AccountService } from '../accounts/service.ts';
import type { Logger } from '../observability/logger.ts';
import { uuidv7 } from '../ids.ts';
import { ApiProblem, notFound } from './problem.ts';
import { aclOf, type DocumentRecord, type FileRecord, type ShareRecord, type ShareRole, type VersionClaim } from './model.ts';
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

export interface FileUpload {
  body: Readable;
  contentType: string;
  filename: string;
}

export interface Visible {
  doc: DocumentRecord;
  access: Access;
}

const FILES_BUCKET = 'document_files';
const MAX_ATTEMPTS = 10;
/** Internal changes made on nobody's behalf (claiming pending shares). */
const SYSTEM = 'system';
type Actor = Caller | typeof SYSTEM;
/** A claim this old was left by a writer that died between claiming and committing. */
const STALE_CLAIM_MS = 30_000;

const escapeRegex = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 11000;
}

/** RFC 9110 If-Match: "*" or a list of strong entity tags; weak tags never match. */
export function ifMatchSatisfied(header: string, etag: string): boolean {
  if (header.trim() === '*') return true;
  return header.split(',').map((tag) => tag.trim()).includes(etag);
}

/** RFC 9110 If-None-Match for GET: true (answer 304) when a listed tag matches, weakly. */
export function ifNoneMatchSatisfied(header: string, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  const opaque = (tag: string) => tag.trim().replace(/^W\//, '');
  return header.split(',').map(opaque).includes(opaque(etag));
}

/**
 * The request body behind a stream that pipeline() may destroy (at the size limit) without
 * destroying the request itself, so the connection survives long enough to answer 413.
 */
function detachable(source: Readable): Readable {
  const pass = new PassThrough();
  // The client may have gone while the document was read: its 'close' has then already fired.
  if (source.destroyed || source.readableAborted) {
    pass.destroy(new Error('the upload was interrupted'));
    return pass;
  }
  source.once('error', (error) => pass.destroy(error));
  source.once('close', () => {
    if (!source.readableEnded) pass.destroy(new Error('the upload was interrupted'));
  });
  return source.pipe(pass);
}

const forbidden = (action: Action) =>
  new ApiProblem('forbidden', 403, `Your access to this document does not allow this (${action}).`);

const preconditionFailed = () =>
  new ApiProblem('precondition-failed', 412, 'The document has changed since the version named in If-Match. Read it again and retry.');

export class DocumentService {
  private readonly documents: Collection<DocumentRecord>;
  private readonly claims: Collection<VersionClaim>;
  private readonly files: InstanceType<typeof mongoose.mongo.GridFSBucket>;
  private readonly filesCollection: Collection;
  private readonly accounts: AccountService;
  private readonly logger: Logger;

  constructor(connection: Connection, accounts: AccountService, logger: Logger) {
    this.documents = connection.collection<DocumentRecord>('documents');
    this.claims = connection.collection<VersionClaim>('document_version_claims');
    this.files = new mongoose.mongo.GridFSBucket(connection.db!, { bucketName: FILES_BUCKET });
    this.filesCollection = connection.collection(`${FILES_BUCKET}.files`);
    this.accounts = accounts;
    this.logger = logger;
  }

  async ensureIndexes(): Promise<void> {
    await this.documents.createIndex({ acl: 1, _id: -1 });
    await this.documents.createIndex({ 'shares.email': 1 });
    // Deleting a document finds its files by this field.
    await this.filesCollection.createIndex({ 'metadata.documentId': 1 });
  }

  async create(caller: Caller, input: DocumentInput): Promise<Visible> {
    const owner = caller.kind === 'client'
      ? { type: 'client' as const, id: caller.clientId }
      : { type: 'user' as const, id: caller.sub };
    const now = new Date();
    const doc: DocumentRecord = {
      _id: uuidv7(now.getTime()),
      owner,
      title: input.title,
      content: input.content ?? '',
      tags: input.tags ?? [],
      shares: [],
      acl: aclOf(owner, []),
      file: null,
      version: 1,
      createdAt: now,
      updatedAt: now,
    };
    await this.documents.insertOne(doc);
    return { doc, access: 'owner' };
  }

  /** Newest first; `nextCursor` is the id to pass as `after` for the next page, if there is one. */
  async list(caller: Caller, query: ListQuery): Promise<{ items: Visible[]; next: string | undefined }> {
    const filter: Record<string, unknown> = isAdmin(caller) ? {} : { acl: callerPrincipal(caller) };
    if (query.after) filter._id = { $lt: query.after };
    if (query.tag) filter.tags = query.tag;
    if (query.q) filter.title = { $regex: escapeRegex(query.q), $options: 'i' };
    const docs = await this.documents
      .find(filter, { projection: { content: 0 } })
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
    if (!doc || !access) throw notFound();
    return { doc, access };
  }

  async update(caller: Caller, id: string, patch: DocumentPatch, ifMatch: string | undefined): Promise<Visible> {
    const { after, access } = await this.change(caller, id, 'update', ifMatch, () => {
      const changes: Partial<DocumentRecord> = {};
      if (patch.title !== undefined) changes.title = patch.title;
      if (patch.content !== undefined) changes.content = patch.content;
      if (patch.tags !== undefined) changes.tags = patch.tags;
      return changes;
    });
    return { doc: after, access };
  }

  async delete(caller: Caller, id: string, ifMatch: string | undefined): Promise<void> {
    // Claims the next version like a change, so a racing update cannot be half-applied to it.
    await this.withDocument(caller, id, 'delete', ifMatch, ({ doc }) => this.claimed(doc, async () =>
      (await this.documents.deleteOne({ _id: id, version: doc.version })).deletedCount === 1 || undefined));
    // Every file stored for it, including one an upload committed while this delete ran.
    const files = await this.files.find({ 'metadata.documentId': id }, { projection: { _id: 1 } }).toArray();
    const results = await Promise.allSettled(files.map((file) => this.files.delete(file._id)));
    const failed = results.filter((r) => r.status === 'rejected').length;
    if (failed) this.logger.error({ documentId: id, failed }, 'deleting the files of a deleted document failed');
  }

  /**
   * Streams the upload into GridFS (hashing and counting as it goes, and stopping at maxBytes),
   * then points the document at it and deletes the file it replaces.
   */
  async putFile(caller: Caller, id: string, upload: FileUpload, maxBytes: number, ifMatch: string | undefined): Promise<Visible> {
    const { doc, access } = await this.get(caller, id);
    if (!may(access, 'update')) throw forbidden('update');
    if (ifMatch !== undefined && !ifMatchSatisfied(ifMatch, etagOf(doc))) throw preconditionFailed();

    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        size += chunk.length;
        if (size > maxBytes) return callback(tooLarge(maxBytes));
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    const stream = this.files.openUploadStream(upload.filename, { metadata: { documentId: id, contentType: upload.contentType } });
    try {
      await pipeline(detachable(upload.body), meter, stream);
    } catch (error) {
      await stream.abort().catch(() => undefined);
      throw error;
    }
    const file: FileRecord = {
      gridFsId: stream.id,
      contentType: upload.contentType,
      size,
      filename: upload.filename,
      sha256: hash.digest('base64'),
      uploadedAt: new Date(),
    };
    try {
      const { before, after, access: finalAccess } = await this.change(caller, id, 'update', ifMatch, () => ({ file }));
      if (before.file) await this.files.delete(before.file.gridFsId).catch(() => undefined);
      return { doc: after, access: finalAccess };
    } catch (error) {
      await this.files.delete(stream.id).catch(() => undefined);
      throw error;
    }
  }

  async openFile(caller: Caller, id: string): Promise<{ file: FileRecord; stream: Readable }> {
    const { doc } = await this.get(caller, id);
    const noFile = () => new ApiProblem('not-found', 404, 'This document has no file.');
    if (!doc.file) throw noFile();
    // A replacing upload or a delete may have removed it since the document was read; answer
    // 404 rather than failing once the response has started.
    if (!(await this.filesCollection.countDocuments({ _id: doc.file.gridFsId }, { limit: 1 }))) throw noFile();
    return { file: doc.file, stream: this.files.openDownloadStream(doc.file.gridFsId) };
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
  async addShare(caller: Caller, id: string, email: string, role: ShareRole): Promise<{ share: ShareRecord; created: boolean }> {
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
    });
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

  async removeShare(caller: Caller, id: string, userId: string): Promise<void> {
    await this.change(caller, id, 'share', undefined, (doc) => {
      const shares = doc.shares.filter((s) => s.userId !== userId);
      if (shares.length === doc.shares.length) throw new ApiProblem('not-found', 404, 'This document is not shared with that user.');
      return { shares, acl: aclOf(doc.owner, shares) };
    });
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
   * undefined) that another writer got there first.
   */
  private async withDocument<T>(
    actor: Actor, id: string, action: Action, ifMatch: string | undefined, write: (visible: Visible) => Promise<T | undefined>,
  ): Promise<T> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt += 1) {
      const visible = await this.load(actor, id);
      if (!may(visible.access, action)) throw forbidden(action);
      if (ifMatch !== undefined && !ifMatchSatisfied(ifMatch, etagOf(visible.doc))) throw preconditionFailed();
      const result = await write(visible);
      if (result !== undefined) return result;
      // Lost to another writer, who is usually done within milliseconds: back off with jitter
      // so that writers queued on one document do not keep colliding.
      await setTimeout(2 * (attempt + 1) + Math.random() * 5);
    }
    throw new ApiProblem('conflict', 409, 'The document is being changed by other requests; try again.');
  }

  /** Applies `mutate`'s changes as the next version. `mutate` may throw an ApiProblem to refuse. */
  private change(
    actor: Actor, id: string, action: Action, ifMatch: string | undefined,
    mutate: (doc: DocumentRecord) => Partial<DocumentRecord>,
  ): Promise<{ before: DocumentRecord; after: DocumentRecord; access: Access }> {
    return this.withDocument(actor, id, action, ifMatch, async ({ doc, access }) => {
      const after = await this.commit(doc, mutate(doc));
      return after && { before: doc, after, access };
    });
  }

  /** Writes the next version of `doc`, or returns undefined if another writer got there first. */
  private commit(doc: DocumentRecord, changes: Partial<DocumentRecord>): Promise<DocumentRecord | undefined> {
    return this.claimed(doc, async () => {
      const version = doc.version + 1;
      const updatedAt = new Date();
      const { matchedCount } = await this.documents.updateOne(
        { _id: doc._id, version: doc.version },
        { $set: { ...changes, version, updatedAt } },
      );
      return matchedCount === 1 ? { ...doc, ...changes, version, updatedAt } : undefined;
    });
  }

  /** Runs `write` holding the claim on `doc`'s next version; undefined when another writer holds it. */
  private async claimed<T>(doc: DocumentRecord, write: () => Promise<T | undefined>): Promise<T | undefined> {
    const claim = { _id: `${doc._id}:${doc.version + 1}`, at: new Date() };
    try {
      await this.claims.insertOne(claim);
    } catch (error) {
      if (!isDuplicateKey(error)) throw error;
      await this.releaseIfStale(claim._id);
      return undefined;
    }
    try {
      return await write();
    } finally {
      // Once the write is done, later writers see the new version and no longer need the claim.
      // Matched on `at` too, so a claim taken over as stale is left to its new holder. A failure
      // here must not undo a write that happened: the claim goes stale and is taken over.
      await this.claims.deleteOne(claim).catch(() => undefined);
    }
  }

  private async releaseIfStale(claimId: string): Promise<void> {
    const claim = await this.claims.findOne({ _id: claimId });
    if (claim && Date.now() - claim.at.getTime() > STALE_CLAIM_MS) await this.claims.deleteOne({ _id: claimId, at: claim.at });
  }
}

export function tooLarge(maxBytes: number): ApiProblem {
  return new ApiProblem('payload-too-large', 413, `The file is larger than the limit of ${maxBytes} bytes.`);
}
