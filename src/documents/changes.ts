/**
 * The versioned write loop behind every document change. Every change goes through `change()`:
 * read, check the caller's access and If-Match, then commit a new version. A commit first claims
 * the version it produces (claims.ts), so only one writer can produce each version: on MongoDB
 * the conditional update would suffice, but FerretDB v1 runs it as a read then a write, and two
 * writers could both succeed. A writer that loses re-reads and tries again (or gets 412 when it
 * sent If-Match). Each change carries its audit event in the same write (audit-outbox.ts).
 */
import { setTimeout } from 'node:timers/promises';
import type { Collection } from 'mongoose';
import { AuditLog, type AuditEvent } from '../audit/log.ts';
import type { AuditOutbox } from './audit-outbox.ts';
import type { VersionClaims } from './claims.ts';
import { ifMatchSatisfied } from './conditions.ts';
import { Lanes } from './lanes.ts';
import type { DocumentRecord } from './model.ts';
import { accessOf, may, type Access, type Action } from './policy.ts';
import { etagOf } from './presenter.ts';
import { ApiProblem, notFound } from './problem.ts';
import type { Caller } from './token.ts';

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
export const SYSTEM = 'system';
export type Actor = Caller | typeof SYSTEM;

/** Full jitter: a random wait up to an exponentially growing, capped bound. */
const backoff = (attempt: number) => Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 10));

export function auditEvent(actor: Caller, action: string, target: string, info: RequestInfo): AuditEvent {
  return AuditLog.event({
    actor: { sub: actor.sub, clientId: actor.clientId }, action, target, outcome: 'success', ip: info.ip, requestId: info.requestId,
  });
}

export const forbidden = (action: Action) =>
  new ApiProblem('forbidden', 403, `Your access to this document does not allow this (${action}).`);

export const preconditionFailed = () =>
  new ApiProblem('precondition-failed', 412, 'The document has changed since the version named in If-Match. Read it again and retry.');

export class DocumentChanges {
  private readonly documents: Collection<DocumentRecord>;
  private readonly claims: VersionClaims;
  private readonly outbox: AuditOutbox;
  private readonly lanes = new Lanes();

  constructor(deps: { documents: Collection<DocumentRecord>; claims: VersionClaims; outbox: AuditOutbox }) {
    this.documents = deps.documents;
    this.claims = deps.claims;
    this.outbox = deps.outbox;
  }

  /** The document with the actor's access to it; 404 when it does not exist or is not visible. */
  async load(actor: Actor, id: string): Promise<Visible> {
    const doc = await this.documents.findOne({ _id: id });
    const access = doc ? (actor === SYSTEM ? 'admin' : accessOf(actor, doc)) : undefined;
    if (!doc || doc.deletedAt || !access) throw notFound();
    return { doc, access };
  }

  /**
   * Applies `mutate`'s changes as the next version, with the audit event of the change (none
   * for SYSTEM changes), then has the outbox write the event. `mutate` may throw an ApiProblem
   * to refuse.
   */
  async change(
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
