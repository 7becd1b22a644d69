/**
 * The rest of a request body nobody read: a refused upload (413), a type we do not take (415), a
 * body that was never needed (401, 404). Answering it with "Connection: close" made Node destroy
 * the socket as soon as the answer was written, while the client was still sending; closing with
 * unread data resets the connection, so the client could get EPIPE or ECONNRESET instead of our
 * answer (RFC 9112 section 9.6). Instead, the rest is read and thrown away, as a lingering close
 * does, and the connection stays usable; only past a bound in bytes or time is it closed.
 */
import type { IncomingMessage } from 'node:http';
import type { Middleware } from 'koa';

export interface DiscardLimits {
  /** The most thrown away after the answer; beyond it the connection is closed. */
  maxBytes: number;
  /** How long the rest may take to arrive before the connection is closed. */
  maxMs: number;
}

const DEFAULT_LIMITS: DiscardLimits = { maxBytes: 16 * 1024 * 1024, maxMs: 10_000 };

function discardRest(req: IncomingMessage, { maxBytes, maxMs }: DiscardLimits): void {
  let discarded = 0;
  const close = () => {
    done();
    req.socket.destroy();
  };
  const timer = setTimeout(close, maxMs).unref();
  const count = (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > maxBytes) close();
  };
  const done = () => {
    clearTimeout(timer);
    req.off('data', count);
    req.off('end', done);
    req.off('close', done);
  };
  req.on('data', count);
  req.once('end', done);
  req.once('close', done);
  req.resume();
}

/** Outermost: once the answer is decided, a body still arriving is read to its end and dropped. */
export function discardUnreadBodies(limits: DiscardLimits = DEFAULT_LIMITS): Middleware {
  return async (ctx, next) => {
    try {
      await next();
    } finally {
      // Flowing means someone still reads it (an upload answered 503 at its deadline goes on to
      // its end); a parser that gave up left it paused, a route that never read it left it alone.
      const { req } = ctx;
      if (!req.complete && !req.destroyed && req.readableFlowing !== true) discardRest(req, limits);
    }
  };
}
