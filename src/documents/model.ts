/** How documents are stored. The API's representation is built from these in presenter.ts. */
import type { Types } from 'mongoose';
import type { AuditEvent } from '../audit/log.ts';

export type ShareRole = 'viewer' | 'editor';

export interface ShareRecord {
  /** The account shared with; for an email without an account, a placeholder id (see service). */
  userId: string;
  email: string;
  role: ShareRole;
  /** True until an account with this email exists. Never shown: it would reveal who has an account. */
  pending: boolean;
  createdAt: Date;
}

export interface FileRecord {
  gridFsId: Types.ObjectId;
  contentType: string;
  size: number;
  filename: string;
  sha256: string;
  uploadedAt: Date;
}

export interface Owner {
  type: 'user' | 'client';
  id: string;
}

export interface DocumentRecord {
  /** UUIDv7: sorts by creation time. */
  _id: string;
  owner: Owner;
  title: string;
  content: string;
  tags: string[];
  shares: ShareRecord[];
  /**
   * Principals that may see the document ("user:<id>", "client:<id>"): the owner and every share.
   * Kept in step with owner and shares by the service, so listing is one indexed query.
   */
  acl: string[];
  file: FileRecord | null;
  /** Incremented by every change; the ETag. */
  version: number;
  createdAt: Date;
  updatedAt: Date;
  /**
   * The audit events of the writes that produced this state, stored in the same write as the
   * change itself, so no acknowledged change can lack its record. They are copied to
   * audit_events (under these ids, so copying twice stores one) and then removed: see
   * audit-outbox.ts. Absent on documents written before the outbox existed.
   */
  pendingAudit?: AuditEvent[];
  /** Set by a delete: the document is gone for every read; the outbox then removes it. */
  deletedAt?: Date;
  /**
   * Created with an Idempotency-Key that is valid until then: deleted before that, the document
   * stays as a tombstone so that a retry of its creation finds it instead of creating it again.
   */
  idempotentUntil?: Date;
  /** A tombstone (content removed) kept until then; see idempotentUntil. */
  tombstoneUntil?: Date;
}

/**
 * One per version transition of a document, `_id` "<documentId>:<version>". Inserting it is how a
 * writer claims the right to produce that version: a unique-key insert is atomic on MongoDB and on
 * FerretDB v1, whose conditional updates are not.
 */
export interface VersionClaim {
  _id: string;
  at: Date;
}

export const principal = (owner: Owner): string => `${owner.type}:${owner.id}`;

export function aclOf(owner: Owner, shares: readonly ShareRecord[]): string[] {
  return [principal(owner), ...shares.map((share) => `user:${share.userId}`)];
}
