/**
 * The audit outbox of the documents API. A change stores its audit event in the document
 * (pendingAudit) in the same write as the change, so a change that is acknowledged, or that
 * happened although its answer was lost, always has its event. finish() then copies the pending
 * events to audit_events (by id, so copying twice stores one) and removes them; for a deleted
 * document it also removes the files and the document itself, or leaves a tombstone (model.ts).
 * Each request finishes its own write; the relay finishes what a failure left pending.
 */
import type { Collection } from 'mongoose';
import type { AuditEvent, AuditLog } from '../audit/log.ts';
import type { Logger } from '../observability/logger.ts';
import type { VersionClaims } from './claims.ts';
import type { DocumentRecord } from './model.ts';

/** Documents a relay round looks at, at most. */
const RELAY_BATCH = 500;

/** What a tombstone keeps of a deleted document: its id, owner and times. */
const TOMBSTONE = { title: '', content: '', tags: [], shares: [], acl: [], file: null, pendingAudit: [] };

export class AuditOutbox {
  private readonly documents: Collection<DocumentRecord>;
  private readonly claims: VersionClaims;
  private readonly audit: AuditLog;
  private readonly removeFiles: (documentId: string) => Promise<void>;
  private readonly logger: Logger;

  constructor(options: {
    documents: Collection<DocumentRecord>; claims: VersionClaims; audit: AuditLog; logger: Logger;
    removeFiles: (documentId: string) => Promise<void>;
  }) {
    this.documents = options.documents;
    this.claims = options.claims;
    this.audit = options.audit;
    this.removeFiles = options.removeFiles;
    this.logger = options.logger;
  }

  /**
   * Writes the document's pending events and removes them (and a deleted document). False when a
   * concurrent writer held the document: its own finish, or the relay, completes the work.
   *
   * A request passes the change it made (`own`): its event is written first, so the request is
   * audited when it answers; the rest is left to the writer of a newer version, if there is one,
   * which keeps writers queued on one document from also queueing to clear it.
   */
  async finish(id: string, own?: { version: number; event: AuditEvent }): Promise<boolean> {
    if (own) await this.audit.writeOnce([own.event]);
    const doc = await this.documents.findOne({ _id: id });
    if (own && doc && doc.version !== own.version) return false;
    const pending = doc?.pendingAudit ?? [];
    if (!doc || pending.length === 0) return true;
    await this.audit.writeOnce(pending.filter((event) => event._id !== own?.event._id));
    if (doc.deletedAt) await this.removeFiles(id);
    // Under the claim, so the update cannot overwrite a concurrent change on FerretDB; the
    // version stays, so the document's ETag does not change.
    const filter = { _id: id, version: doc.version };
    const done = await this.claims.claimed(doc, async () => {
      if (!doc.deletedAt) return (await this.documents.updateOne(filter, { $set: { pendingAudit: [] } })).matchedCount === 1 || undefined;
      const until = doc.idempotentUntil;
      if (until && until.getTime() > Date.now()) {
        return (await this.documents.updateOne(filter, { $set: { ...TOMBSTONE, tombstoneUntil: until } })).matchedCount === 1 || undefined;
      }
      return (await this.documents.deleteOne(filter)).deletedCount === 1 || undefined;
    });
    return done === true;
  }

  /**
   * finish() for a document just created, before its id is known to anyone else: no other writer
   * can hold it (an idempotent retry only reads it), so no claim or version filter is needed to
   * clear its event. By `_id` alone on purpose: FerretDB v1 uses its `_id` index only for a filter
   * that has nothing else, and scans the whole collection otherwise.
   */
  async finishCreated(id: string, version: number, event: AuditEvent): Promise<void> {
    try {
      await this.audit.writeOnce([event]);
      await this.documents.updateOne({ _id: id }, { $set: { pendingAudit: [] } });
    } catch (error) {
      this.logger.warn({ err: error, documentId: id }, 'finishing a document change failed; the audit relay will complete it');
    }
  }

  /** finish() for a request whose change is already stored: a failure is only logged. */
  async finishQuietly(id: string, own: { version: number; event: AuditEvent }): Promise<void> {
    await this.finish(id, own).catch((error: unknown) => {
      this.logger.warn({ err: error, documentId: id }, 'finishing a document change failed; the audit relay will complete it');
    });
  }

  /** Finishes the documents with events pending since before `olderThan`; returns how many it finished. */
  async relay(olderThan: Date): Promise<number> {
    const stuck = await this.documents.find({ 'pendingAudit.at': { $lt: olderThan } }, { projection: { _id: 1 } })
      .limit(RELAY_BATCH).toArray();
    let finished = 0;
    for (const { _id } of stuck) {
      try {
        if (await this.finish(_id)) finished += 1;
      } catch (error) {
        this.logger.error({ err: error, documentId: _id }, 'relaying pending audit events failed');
      }
    }
    return finished;
  }

  /** Removes tombstones whose Idempotency-Key has expired. */
  async sweepTombstones(now = new Date()): Promise<number> {
    return (await this.documents.deleteMany({ tombstoneUntil: { $lt: now } })).deletedCount;
  }
}
