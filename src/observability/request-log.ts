/**
 * One log line per request (method, path without query, status, duration, request id) and an
 * X-Request-Id on every response. The query string is never logged: authorization requests and
 * callbacks carry state, codes and hints there.
 */
import { randomUUID } from 'node:crypto';
import type { Middleware } from 'koa';
import type { Logger } from './logger.ts';

const INCOMING_ID = /^[\w.:-]{8,128}$/;

export function requestLog(logger: Logger): Middleware {
  return async (ctx, next) => {
    const started = performance.now();
    const incoming = ctx.get('x-request-id');
    const requestId = INCOMING_ID.test(incoming) ? incoming : randomUUID();
    ctx.state.requestId = requestId;
    ctx.set('X-Request-Id', requestId);
    // Read now: once a client has gone away the socket no longer has an address.
    const ip = ctx.ip;
    try {
      await next();
    } finally {
      logger.info({
        requestId, method: ctx.method, path: ctx.path, status: ctx.status, ms: Math.round(performance.now() - started), ip,
      }, 'request');
    }
  };
}
