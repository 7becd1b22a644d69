/**
 * The rest of a request body nobody read: a refused upload (413), a type we do not take (415), a
 * body that was never needed (401, 404). Answering it with "Connection: close" made Node destroy
 * the socket as soon as the answer was written, while the client was still sending; closing with
 * unread data resets the connection, so the client could get EPIPE or ECONNRESET instead of our
 * answer (RFC 9112 section 9.6). Instead, the rest is read and thrown away, as a lingering close
 * does, and the connection stays usable; only past a bound in bytes or time is it closed.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Middleware } from 'koa';

export interface DiscardLimits {
  /** The most thrown away after the answer; beyond it the connection is closed. */
  maxBytes: number;
  /** How long the rest may take to arrive before the connection is closed. */
  maxMs: number;
}

const DEFAULT_LIMITS: DiscardLimits = { maxBytes: 16 * 1024 * 1024, maxMs: 10_000 };
const stillReading = new WeakMap<IncomingMessage, Promise<unknown>>();
/** The request each connection is still receiving after its answer, while it is. */
const answeredEarly = new WeakMap<Duplex, IncomingMessage>();

/** For a route answered before its work ended (the deadline's 503): the body is that work's until it ends. */
export function leaveBodyTo(req: IncomingMessage, work: Promise<unknown>): void {
  stillReading.set(req, work);
}

/**
 * Whether the connection is still bringing the body of a request already answered: nothing more
 * is owed on it. Only until that body is complete, so the next request's errors get their answer.
 */
export function isDiscardingBody(socket: Duplex): boolean {
  const req = answeredEarly.get(socket);
  return req !== undefined && !req.complete && !req.destroyed;
}

/**
 * Node stops watching a request once its answer is written: a connection closed after that would
 * leave the request open for good, with any reader still waiting on it (and its in-flight slot).
 */
function endWithConnection(req: IncomingMessage): void {
  const { socket } = req;
  const cut = () => {
    if (!req.complete && !req.destroyed) req.destroy();
  };
  if (socket.destroyed) return cut();
  socket.once('close', cut);
  req.once('end', () => socket.off('close', cut));
}

function discardRest(req: IncomingMessage, { maxBytes, maxMs }: DiscardLimits): void {
  // Complete but not ended: its last bytes wait, paused, in the stream (and 'end' with them).
  if (req.readableEnded || req.destroyed) return;
  let discarded = 0;
  const close = () => {
    done();
    req.destroy();
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
  // A parser that gave up may still hold the stream: piped into a decompressor it stopped reading.
  req.unpipe();
  req.on('data', count);
  req.once('end', done);
  req.once('close', done);
  req.resume();
}

/** Outermost: once the answer is decided and its work has ended, a body still arriving is read to its end and dropped. */
export function discardUnreadBodies(limits: DiscardLimits = DEFAULT_LIMITS): Middleware {
  return async (ctx, next) => {
    try {
      await next();
    } finally {
      const { req } = ctx;
      if (!req.complete && !req.destroyed) {
        answeredEarly.set(req.socket, req);
        endWithConnection(req);
        const work = stillReading.get(req);
        if (work) void work.then(() => discardRest(req, limits), () => discardRest(req, limits));
        else discardRest(req, limits);
      }
    }
  };
}
