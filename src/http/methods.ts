/**
 * Which methods each path supports, asked of the routers themselves (ours and oidc-provider's),
 * so a 405's Allow header (RFC 9110 15.5.6) follows the routes instead of a hand-kept list.
 *
 * Node's HTTP parser decides which methods reach Koa at all: names it does not know (FOO, TRACK)
 * are refused there, and CONNECT never reaches a request handler. `refuseConnect` and
 * `refuseUnparsable` answer those at the server (see server.ts).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type Router from '@koa/router';
import type { Provider } from 'oidc-provider';
// @ts-expect-error -- an untyped internal of oidc-provider: the per-instance state holding its router.
import providerInternals from 'oidc-provider/lib/helpers/weak_cache.js';
import { isDiscardingBody } from './unread-body.ts';

/** The methods any of our routes can be reached with; everything else is refused up front. */
export const ROUTED_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** What a path with no route allows: GET and HEAD, which answer it with a 404 page. */
export const UNKNOWN_PATH_ALLOW = 'GET, HEAD';

const CANDIDATES = ROUTED_METHODS.filter((method) => method !== 'OPTIONS');

interface ProviderRouter {
  match(method: string, path: string): unknown;
}

function providerRouter(provider: Provider): ProviderRouter {
  const router = (providerInternals as (p: Provider) => { router?: ProviderRouter } | undefined)(provider)?.router;
  // Fail at start-up, not with wrong answers, if an upgrade of oidc-provider moves its router.
  if (typeof router?.match !== 'function') throw new Error('oidc-provider router not found: check src/http/methods.ts against this oidc-provider version');
  return router;
}

export class RouteTable {
  private readonly routers: Router[] = [];
  private readonly provider: ProviderRouter | undefined;

  /** With a provider, its routes count too (it is mounted at the root). */
  constructor(provider?: Provider) {
    this.provider = provider ? providerRouter(provider) : undefined;
  }

  add(router: Router): this {
    this.routers.push(router);
    return this;
  }

  /** The methods `path` answers, OPTIONS included; empty when no route has this path. */
  allowed(path: string): string[] {
    const methods = new Set<string>();
    for (const method of CANDIDATES) {
      if (this.provider?.match(method, path)) methods.add(method);
      for (const router of this.routers) {
        if (router.match(path, method).pathAndMethod.some((layer) => layer.methods.length > 0)) methods.add(method);
      }
    }
    if (methods.size === 0) return [];
    if (methods.has('GET')) methods.add('HEAD');
    methods.add('OPTIONS');
    return ROUTED_METHODS.filter((method) => methods.has(method));
  }
}

function writeRaw(socket: Duplex, status: string, headers: Record<string, string>, body = ''): void {
  if (!socket.writable) return;
  const lines = Object.entries({ ...headers, 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close' })
    .map(([name, value]) => `${name}: ${value}`);
  socket.end(`HTTP/1.1 ${status}\r\n${lines.join('\r\n')}\r\n\r\n${body}`);
}

/**
 * For the server's 'connect' event: without a listener Node drops a CONNECT's connection
 * without an answer. This is not a proxy, so CONNECT is refused like any unsupported method.
 */
export function refuseConnect(_request: IncomingMessage, socket: Duplex): void {
  writeRaw(socket, '405 Method Not Allowed', { Allow: UNKNOWN_PATH_ALLOW, 'Content-Type': 'text/plain; charset=utf-8' }, 'Method not allowed.\n');
}

/**
 * For the server's 'clientError' event: Node's defaults, except that a method name the parser
 * does not know is answered 501 Not Implemented (RFC 9110 15.6.2) rather than 400.
 */
export function refuseUnparsable(error: Error & { code?: string }, socket: Duplex): void {
  if (error.code === 'ECONNRESET') return;
  // Its answer has gone: the request timeout (or a bad chunk) ending a refused body owes no other.
  if (isDiscardingBody(socket)) {
    socket.destroy();
    return;
  }
  // As Node's default: once a response has begun on this connection, only close it.
  if ((socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) {
    socket.destroy(error);
    return;
  }
  const text = { 'Content-Type': 'text/plain; charset=utf-8' };
  if (error.code === 'HPE_INVALID_METHOD') writeRaw(socket, '501 Not Implemented', text, 'This method is not supported.\n');
  else if (error.code === 'HPE_HEADER_OVERFLOW') writeRaw(socket, '431 Request Header Fields Too Large', {});
  else if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') writeRaw(socket, '408 Request Timeout', {});
  else writeRaw(socket, '400 Bad Request', {});
}
