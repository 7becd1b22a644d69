/**
 * One POST of a logout token (Back-Channel Logout 1.0, section 2.5): form-encoded `logout_token`,
 * bounded by a timeout, redirects not followed (an RP answers the POST itself), any 2xx accepted.
 * What a failure says is safe to log: a status or the kind of network error, never the token or
 * the answer's body.
 *
 * `publicOnly` (clients that registered themselves, in production): the address the name resolves
 * to must be a public one, checked on the connection itself (node's `lookup` hook), so a name that
 * resolves to an internal service, first or on a second lookup, never gets the POST.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import { BlockList, isIP } from 'node:net';

export class DeliveryFailure extends Error {}

/** Loopback, private, link-local, shared, multicast and reserved ranges (IPv4 and IPv6). */
const INTERNAL = new BlockList();
for (const [net, prefix] of [['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['224.0.0.0', 3]] as const) INTERNAL.addSubnet(net, prefix, 'ipv4');
// IPv4-mapped addresses (::ffff:a.b.c.d) are checked as the IPv4 address they carry: BlockList
// would match every IPv4 address against a ::ffff:0:0/96 rule.
for (const [net, prefix] of [['::', 127], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8]] as const) INTERNAL.addSubnet(net, prefix, 'ipv6');

export function isInternalAddress(address: string): boolean {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address)?.[1];
  if (mapped) return isInternalAddress(mapped);
  const family = isIP(address);
  return family === 0 || INTERNAL.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

function publicLookup(hostname: string, options: object, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error) return callback(error, []);
    const internal = addresses.find((a) => isInternalAddress(a.address));
    if (internal) return callback(Object.assign(new Error('refused: the address is not public'), { code: 'EINTERNALADDRESS' }), []);
    const wantsAll = (options as { all?: boolean }).all === true;
    return wantsAll ? callback(null, addresses) : callback(null, addresses[0]!.address, addresses[0]!.family);
  });
}

export async function postLogoutToken(uri: string, token: string, timeoutMs: number, options: { publicOnly?: boolean } = {}): Promise<void> {
  const url = new URL(uri);
  if (options.publicOnly && isIP(url.hostname.replace(/^\[|\]$/g, '')) && isInternalAddress(url.hostname.replace(/^\[|\]$/g, ''))) {
    throw new DeliveryFailure('network error (EINTERNALADDRESS)');
  }
  const body = new URLSearchParams({ logout_token: token }).toString();
  const status = await new Promise<number>((resolve, reject) => {
    const request = (url.protocol === 'https:' ? https : http).request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) },
      signal: AbortSignal.timeout(timeoutMs),
      ...(options.publicOnly ? { lookup: publicLookup as never } : {}),
    }, (response) => {
      // The body is not ours to read or keep; the connection is released either way.
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    request.on('error', (error: Error & { code?: unknown }) => {
      reject(new DeliveryFailure(error.name === 'AbortError' || error.name === 'TimeoutError' ? 'timed out' : `network error${error.code ? ` (${String(error.code)})` : ''}`));
    });
    request.end(body);
  });
  if (status < 200 || status > 299) throw new DeliveryFailure(`answered ${status}`);
}

/** A failure as a log field: DeliveryFailure's own words, or the name of anything else. */
export const failureReason = (error: unknown) => (error instanceof DeliveryFailure ? error.message : (error as Error).name);
