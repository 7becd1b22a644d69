/**
 * What the storage adapter and the account service read or wrote during the current HTTP request.
 * oidc-provider and our routes read the same document more than once in one request (a code is
 * found and then consumed, a session is found and then re-keyed, an account's claims and then
 * its roles); the second read is answered from here. Nothing outlives its request, so other
 * instances' changes are seen exactly as before: a request that read a document twice got no
 * stronger guarantee from the second read, there being no transactions.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

/** A stored document as it was read or written, or null once known to be absent. */
export type Remembered<T> = T | null;

export class RequestMemo {
  private readonly entries = new Map<string, unknown>();
  /** Bumped by forgetAll, so that a read begun before it cannot put back what it found. */
  generation = 0;
  /**
   * Set when the request has been answered. A timer or a promise created during the request
   * keeps its async context for good; from then on it reads the database like any background work.
   */
  ended = false;

  get<T>(key: string): Remembered<T> | undefined {
    return this.ended ? undefined : (this.entries.get(key) as Remembered<T> | undefined);
  }

  /** `readAt`: the generation when the read began (a write passes nothing). */
  set(key: string, value: unknown, readAt = this.generation): void {
    if (!this.ended && readAt === this.generation) this.entries.set(key, value);
  }

  /** After a revocation: whatever was read before may be gone. */
  forgetAll(): void {
    this.entries.clear();
    this.generation += 1;
  }
}

const current = new AsyncLocalStorage<RequestMemo>();

/** Runs one request with an empty memo (installed once, at the top of the Koa app). */
export async function withRequestMemo<T>(work: () => Promise<T>): Promise<T> {
  const memo = new RequestMemo();
  try {
    return await current.run(memo, work);
  } finally {
    memo.ended = true;
  }
}

/** The memo of the request being served; undefined outside a request (CLI, timers, tests). */
export function requestMemo(): RequestMemo | undefined {
  const memo = current.getStore();
  return memo && !memo.ended ? memo : undefined;
}
