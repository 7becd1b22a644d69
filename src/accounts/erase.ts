/**
 * `user delete`: erases an account and everything kept for it. FerretDB has no transactions, so
 * the steps are ordered to be safe to run again after a crash half-way: the account is first
 * marked (deletingAt, and disabled, so nothing can sign in to it or use its tokens meanwhile),
 * each step only removes what is still there, and the account record goes last. Until then a
 * second `user delete` finds the account and finishes the work.
 *
 * Kept on purpose: the audit trail (it names the account id), the JWT revocation record (it must
 * outlive the access tokens it stops) and a pending share with the address made before the
 * account existed (it belongs to the document's owner).
 */
import { AppError } from '../http/errors.ts';
import type { Services } from '../services.ts';
import { accountModel } from './model.ts';
import { normalizeEmail } from './service.ts';

export interface EraseOptions {
  /** The documents go to this account (id or email) instead of being deleted. */
  transferTo?: string | undefined;
  /** Who asked, for the documents' own audit events (`operator:NAME`). */
  actor: string;
}

export interface EraseReport {
  id: string;
  email: string;
  sessions: number;
  grants: number;
  documents: { deleted: number; transferred: number; transferred_to: string | null };
  shares_removed: number;
}

type EraseServices = Pick<Services, 'connection' | 'accounts' | 'store' | 'revocations' | 'mfa' | 'accountTokens' | 'documents'>;

export async function eraseAccount(services: EraseServices, idOrEmail: string, options: EraseOptions): Promise<EraseReport> {
  const { accounts, store, revocations, mfa, accountTokens, documents } = services;
  const model = accountModel(services.connection);
  const account = await accounts.get(idOrEmail);
  if (!account) throw new AppError('account_not_found', 'no such account', 404);
  let transferTo: string | undefined;
  if (options.transferTo !== undefined) {
    const target = await model.findOne(options.transferTo.includes('@') ? { email: normalizeEmail(options.transferTo) } : { _id: options.transferTo }, { _id: 1, deletingAt: 1 }).lean();
    if (!target || target.deletingAt) throw new AppError('account_not_found', 'no such account to transfer the documents to', 404);
    if (target._id === account.id) throw new AppError('invalid_transfer', 'the documents cannot be transferred to the account being deleted');
    transferTo = target._id;
  }

  // Marked first: from here on the account cannot sign in, and findAccount no longer sees it.
  await model.updateOne({ _id: account.id }, { $set: { disabled: true, deletingAt: new Date() } }, { timestamps: false });
  const [sessions, grants] = await Promise.all([store.sessionsOf(account.id), store.grantsOf(account.id)]);
  // Sessions (with back-channel logout), grants and stored tokens; and the JWTs already issued.
  await Promise.all([store.revokeAccount(account.id), revocations.revoke('account', account.id)]);
  await mfa.erase(account.id);
  await Promise.all([accountTokens.revokeAll('verify-email', account.id), accountTokens.revokeAll('reset-password', account.id)]);
  const released = await documents.releaseAccount(account.id, { sub: `operator:${options.actor}`, clientId: null }, transferTo);
  // Last: its absence is what says the erasure is complete.
  await model.deleteOne({ _id: account.id });
  return {
    id: account.id, email: account.email, sessions: sessions.length, grants: grants.length,
    documents: { deleted: released.deleted, transferred: released.transferred, transferred_to: transferTo ?? null },
    shares_removed: released.unshared,
  };
}
