/**
 * A load balancer for tests: one loopback address (the issuer) in front of several provider
 * instances. Unlike a real one it does not choose: the test says which instance gets the next
 * requests (`routeTo`), so a flow can be made to hop between instances at exactly the step it
 * wants, and `served` shows which instance answered each request.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ServedRequest {
  readonly backend: string;
  readonly method: string;
  readonly path: string;
  readonly status: number;
}

export interface Balancer {
  /** The address clients use: give it to every instance as ISSUER. */
  readonly url: string;
  /** Every request forwarded so far, in the order the answers came back. */
  readonly served: readonly ServedRequest[];
  /** Sends the requests that arrive from now on to `backend` (an instance's own URL). */
  routeTo(backend: string): void;
  close(): Promise<void>;
}

export async function startBalancer(): Promise<Balancer> {
  let backend: string | undefined;
  const served: ServedRequest[] = [];
  const server = http.createServer((request, response) => {
    const target = backend;
    if (!target) {
      response.writeHead(503).end('no backend chosen');
      return;
    }
    const { hostname, port } = new URL(target);
    // The Host header goes through unchanged, as behind a real proxy: the instances see the issuer's host.
    const upstream = http.request({ hostname, port, method: request.method, path: request.url, headers: request.headers, agent: false }, (answer) => {
      served.push({ backend: target, method: request.method ?? 'GET', path: request.url ?? '/', status: answer.statusCode ?? 0 });
      response.writeHead(answer.statusCode ?? 502, answer.rawHeaders);
      answer.pipe(response);
    });
    upstream.on('error', () => {
      if (!response.headersSent) response.writeHead(502);
      response.end();
    });
    request.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    served,
    routeTo: (next) => { backend = next; },
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
