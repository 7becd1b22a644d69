/**
 * "Not now, try again shortly": the one answer for a dependency that is down or hung, a request
 * that ran out of time and an instance that is full. It is a 503 with Retry-After in whatever form
 * the caller reads: problem+json under /api, a styled page for people, and an OAuth error
 * (`temporarily_unavailable`, RFC 6749 section 4.1.2.1) for every other client, never a 500.
 */
import mongoose from 'mongoose';
import type { Context } from 'koa';
import { PROBLEM_TITLES, problemType } from '../documents/problem.ts';
import { AppError } from './errors.ts';
import { answerError } from './pages.ts';

/** What clients are asked to wait: a dependency outage is seldom over sooner. */
export const RETRY_AFTER_SECONDS = 5;

/** Raised where our own code decides a dependency is not answering (a deadline, a full queue). */
export class ServiceUnavailableError extends AppError {
  readonly retryAfterSeconds: number;
  constructor(reason: string, retryAfterSeconds = RETRY_AFTER_SECONDS) {
    super('temporarily_unavailable', reason, 503, false);
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

const { mongo } = mongoose;
/**
 * The driver's errors that mean "the database did not answer" rather than "the request was
 * wrong": no server to select, a connection refused, reset or timed out, a pool cleared or closed.
 */
const DATABASE_UNAVAILABLE = [
  mongo.MongoServerSelectionError, mongo.MongoNetworkError, mongo.MongoNotConnectedError, mongo.MongoTopologyClosedError,
  mongo.MongoServerClosedError, mongo.MongoClientClosedError,
];
/** Not exported by the driver, but named: a full pool that did not free a connection in time, a closed pool. */
const DATABASE_UNAVAILABLE_NAMES = new Set(['MongoWaitQueueTimeoutError', 'MongoPoolClosedError', 'MongooseServerSelectionError']);

/**
 * Server answers that mean "not now": its own deadline (maxTimeMS, 50) ran out, or it is shutting
 * down or changing primaries (ShutdownInProgress, InterruptedAtShutdown, PrimarySteppedDown,
 * NotWritablePrimary, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary).
 */
const NOT_NOW_CODES = new Set([50, 91, 11600, 189, 10107, 11602, 13435, 13436]);

/**
 * A socket's own error reaching us unwrapped (seen as `{code: 'EPIPE'}` from a write to a
 * database that was killed under load): the dependency went away, not the request.
 */
const SOCKET_GONE_CODES = new Set(['EPIPE', 'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'ETIMEDOUT', 'ENOTCONN', 'EHOSTUNREACH']);

export function isUnavailable(error: unknown): boolean {
  if (error instanceof ServiceUnavailableError) return true;
  if (DATABASE_UNAVAILABLE.some((type) => error instanceof type)) return true;
  if (error instanceof mongo.MongoServerError && typeof error.code === 'number' && NOT_NOW_CODES.has(error.code)) return true;
  // What the driver itself labels worth retrying (network trouble, a primary that went away).
  if (error instanceof mongo.MongoError && (error.hasErrorLabel('RetryableWriteError') || error.hasErrorLabel('RetryableError'))) return true;
  // oidc-provider's TemporarilyUnavailable carries the status (see src/oidc/provider.ts).
  const { name, status, code } = (error ?? {}) as { name?: unknown; status?: unknown; code?: unknown };
  return (typeof name === 'string' && DATABASE_UNAVAILABLE_NAMES.has(name)) || status === 503 || (typeof code === 'string' && SOCKET_GONE_CODES.has(code));
}

const MESSAGE = 'The service is busy or one of its parts is not answering. Please try again in a few seconds.';

/** Browsers name HTML; OAuth clients and scripts do not. */
const isBrowser = (ctx: Context) => /\btext\/html\b/.test(ctx.get('accept'));

export async function answerUnavailable(ctx: Context, retryAfterSeconds = RETRY_AFTER_SECONDS): Promise<void> {
  ctx.status = 503;
  ctx.set('Retry-After', String(retryAfterSeconds));
  ctx.set('Cache-Control', 'no-store');
  if (ctx.path === '/api' || ctx.path.startsWith('/api/')) {
    ctx.type = 'application/problem+json';
    ctx.body = { type: problemType('service-unavailable'), title: PROBLEM_TITLES['service-unavailable'], status: 503, detail: MESSAGE };
  } else if (isBrowser(ctx)) {
    await answerError(ctx, { status: 503, heading: 'Please try again in a moment', message: MESSAGE });
  } else {
    ctx.body = { error: 'temporarily_unavailable', error_description: MESSAGE };
  }
}
