/** Clients that hold a request open on purpose: a body that never finishes, a server left to time them out. */
import { RawConnection, requestHead, type RawResponse } from './raw-http.ts';

/** A token request body of exactly 100 bytes, so a client can send part of it and hold the rest. */
export const TOKEN_FORM = 'grant_type=client_credentials&pad='.padEnd(100, 'x');
/** What a held request has sent of its body. */
export const HELD_PREFIX = 10;

export interface HeldRequest {
  connection: RawConnection;
  /** Sends the rest of the body and waits for the answer. */
  finish(): Promise<RawResponse>;
}

/**
 * A POST /token whose headers are complete and whose body has only begun, so the app waits
 * reading it. On `connection` when given (e.g. one that has carried a request already).
 */
export async function holdTokenRequest(url: string, connection?: RawConnection): Promise<HeldRequest> {
  connection ??= await RawConnection.open(url);
  const held = connection;
  held.write(requestHead('POST', '/token', held.host, {
    'content-type': 'application/x-www-form-urlencoded', 'content-length': String(TOKEN_FORM.length), accept: 'application/json',
  }) + TOKEN_FORM.slice(0, HELD_PREFIX));
  return {
    connection: held,
    finish() {
      held.write(TOKEN_FORM.slice(HELD_PREFIX));
      return held.nextResponse();
    },
  };
}

/** `promise`'s value, or 'timed out' after `ms` (the timer does not outlive the race). */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | 'timed out'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timed out'>((resolve) => { timer = setTimeout(() => resolve('timed out'), ms); });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export interface ServerClose {
  /** Seconds from `start` until the server closed the connection; undefined if it had not within `maxMs`. */
  seconds: number | undefined;
  /** The status of what the server answered before closing, if anything. */
  status: number | undefined;
}

/** Waits for the server to close `connection`. */
export async function serverCloses(connection: RawConnection, start: number, maxMs = 20_000): Promise<ServerClose> {
  const answer = connection.nextResponse(maxMs).then((response) => response.status, () => undefined);
  const closed = await within(connection.closed, maxMs);
  return { seconds: closed === 'timed out' ? undefined : (closed.at - start) / 1000, status: await answer };
}
