/**
 * What the storage adapter and the account service read or wrote during the current HTTP request.
 * oidc-provider and our routes read the same document more than once in one request (a code is
 * found and then consumed, a session is found and then re-keyed, an account's claims and then
 * its roles); the second read is answered from here. Nothing outlives
 * its request, so other instances' changes are seen exactly as before: a request that read an
 * artifact twice got no stronger guarantee from the second read, there being no transactions.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

/** A stored document as it was read or written, or null once known to be absent. */
export type Remembered<T> = T | null;

const current = new AsyncLocalStorage<Map<string, unknown>>();

/** Runs one request with an empty memo (installed once, at the top of the Koa app). */
export function withRequestMemo<T>(work: () => Promise<T>): Promise<T> {
  return current.run(new Map(), work);
}

/** The memo of the request being served; undefined outside a request (CLI, timers, tests). */
export function requestMemo<T>(): Map<string, Remembered<T>> | undefined {
  return current.getStore() as Map<string, Remembered<T>> | undefined;
}
