/**
 * Sharing a document with other accounts, by email, as changes of the document (changes.ts): a
 * share is part of the document's version and its audit event. DocumentService exposes these.
 */
import { randomUUID } from 'node:crypto';
import type { Collection } from 'mongoose';
import type { AccountService } from '../accounts/service.ts';
import { auditEvent, forbidden, SYSTEM, type DocumentChanges, type RequestInfo } from './changes.ts';
import { aclOf, type DocumentRecord, type ShareRecord, type ShareRole } from './model.ts';
import { may } from './policy.ts';
import { ApiProblem } from './problem.ts';
import type { Caller } from './token.ts';

export class DocumentShares {
  private readonly documents: Collection<DocumentRecord>;
  private readonly accounts: AccountService;
  private readonly changes: DocumentChanges;

  constructor(deps: { documents: Collection<DocumentRecord>; accounts: AccountService; changes: DocumentChanges }) {
    this.documents = deps.documents;
    this.accounts = deps.accounts;
    this.changes = deps.changes;
  }

  async list(caller: Caller, id: string): Promise<ShareRecord[]> {
    const { doc, access } = await this.changes.load(caller, id);
    if (!may(access, 'share')) throw forbidden('share');
    return doc.shares;
  }

  /**
   * Shares with the account that has this email, or replaces the role of an existing share.
   * An email without an account gets a pending share under a placeholder id, answered exactly
   * like a real one: the answer never tells whether someone has an account. The share starts
   * working when an account with that email is created (claimPending).
   */
  async add(caller: Caller, id: string, email: string, role: ShareRole, info: RequestInfo): Promise<{ share: ShareRecord; created: boolean }> {
    const normalized = email.trim().toLowerCase();
    // Both lookups run whether or not the account exists, so timing tells nothing either.
    const [account, pendingId] = await Promise.all([this.accounts.get(normalized), this.pendingShareId(normalized)]);
    let result: { share: ShareRecord; created: boolean } | undefined;
    await this.changes.change(caller, id, 'share', undefined, (doc) => {
      if (account && doc.owner.type === 'user' && doc.owner.id === account.id) {
        throw new ApiProblem('validation-error', 400, 'The request body is not valid: /email is the owner of this document, who cannot be added to its shares.', {
          errors: [{ detail: 'is the owner of this document', pointer: '/email' }],
        });
      }
      // The account's own share, by id: the email stored with a share is the one it was given to,
      // and its account may have changed address since (someone else may hold that one now).
      const existing = doc.shares.find((s) => (account ? s.userId === account.id : s.pending && s.email === normalized));
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

  async remove(caller: Caller, id: string, userId: string, info: RequestInfo): Promise<void> {
    await this.changes.change(caller, id, 'share', undefined, (doc) => {
      const shares = doc.shares.filter((s) => s.userId !== userId);
      if (shares.length === doc.shares.length) throw new ApiProblem('not-found', 404, 'This document is not shared with that user.');
      return { shares, acl: aclOf(doc.owner, shares) };
    }, auditEvent(caller, 'document.share.remove', id, info));
  }

  /** Turns pending shares for this email into shares with the new account. */
  async claimPending(email: string, accountId: string): Promise<number> {
    // Matched on shares.email, then filtered here: FerretDB v1 has no $elemMatch on fields.
    const candidates = await this.documents.find({ 'shares.email': email }, { projection: { _id: 1, shares: 1 } }).toArray();
    const docs = candidates.filter((doc) => doc.shares.some((s) => s.pending && s.email === email));
    for (const { _id } of docs) {
      await this.changes.change(SYSTEM, _id, 'share', undefined, (doc) => {
        const shares = doc.shares.map((s) => (s.pending && s.email === email ? { ...s, userId: accountId, pending: false } : s));
        return { shares, acl: aclOf(doc.owner, shares) };
      }).catch((error: unknown) => {
        if (!(error instanceof ApiProblem && error.status === 404)) throw error; // deleted meanwhile
      });
    }
    return docs.length;
  }
}
