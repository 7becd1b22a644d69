/**
 * Who may do what to a document. Scopes say what a token may do at all (checked in routes.ts);
 * this says what its caller may do to one document.
 *   owner   everything
 *   admin   everything, on every document (documents:admin; end users only)
 *   editor  read, change title/content/tags, upload the file
 *   viewer  read
 * A client acting on its own (client_credentials) only ever reaches documents it owns.
 */
import type { Caller } from './token.ts';
import type { DocumentRecord } from './model.ts';

export type Access = 'owner' | 'admin' | 'editor' | 'viewer';
export type Action = 'read' | 'update' | 'delete' | 'share';

export const isAdmin = (caller: Caller): boolean => caller.kind === 'user' && caller.scopes.has('documents:admin');

export const callerPrincipal = (caller: Caller): string => (caller.kind === 'client' ? `client:${caller.clientId}` : `user:${caller.sub}`);

/** The caller's relation to the document, or undefined when it may not even see it. */
export function accessOf(caller: Caller, doc: DocumentRecord): Access | undefined {
  if (caller.kind === 'client') {
    return doc.owner.type === 'client' && doc.owner.id === caller.clientId ? 'owner' : undefined;
  }
  if (doc.owner.type === 'user' && doc.owner.id === caller.sub) return 'owner';
  const share = doc.shares.find((s) => !s.pending && s.userId === caller.sub);
  if (share) return isAdmin(caller) ? 'admin' : share.role;
  return isAdmin(caller) ? 'admin' : undefined;
}

const ALLOWED: Record<Action, readonly Access[]> = {
  read: ['owner', 'admin', 'editor', 'viewer'],
  update: ['owner', 'admin', 'editor'],
  delete: ['owner', 'admin'],
  share: ['owner', 'admin'],
};

export const may = (access: Access, action: Action): boolean => ALLOWED[action].includes(access);
