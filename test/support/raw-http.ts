/**
 * HTTP/1.1 over a bare TCP socket, for what fetch and http.Agent hide: which connection a request
 * travels on, bytes written slowly or never, and exactly when the server closes the connection.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface RawResponse {
  status: number;
  /** Lower-case names. */
  headers: Record<string, string>;
  body: string;
  /** performance.now() when the whole response had arrived. */
  at: number;
}

export interface Closed {
  /** performance.now() when the socket closed. */
  at: number;
  error?: NodeJS.ErrnoException;
}

interface Waiter {
  resolve(response: RawResponse): void;
  reject(error: Error): void;
}

/** The head of a request, ready to be followed by a body of `contentLength` bytes (if any). */
export function requestHead(method: string, target: string, host: string, headers: Record<string, string> = {}): string {
  const lines = [`${method} ${target} HTTP/1.1`, `Host: ${host}`, ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`)];
  return `${lines.join('\r\n')}\r\n\r\n`;
}

export class RawConnection {
  readonly host: string;
  /** Resolves when the socket has closed, whoever closed it. */
  readonly closed: Promise<Closed>;
  private readonly socket: net.Socket;
  private buffer = Buffer.alloc(0);
  private readonly responses: RawResponse[] = [];
  private readonly waiters: Waiter[] = [];
  private ended: Closed | undefined;

  private constructor(socket: net.Socket, host: string) {
    this.socket = socket;
    this.host = host;
    let error: NodeJS.ErrnoException | undefined;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.parse(false);
    });
    socket.on('error', (e: NodeJS.ErrnoException) => { error = e; });
    this.closed = new Promise((resolve) => socket.once('close', () => {
      // A response without a length ends with the connection.
      this.parse(true);
      this.ended = { at: performance.now(), error };
      for (const waiter of this.waiters.splice(0)) waiter.reject(new Error(`connection closed before a response${error ? ` (${error.code})` : ''}`));
      resolve(this.ended);
    }));
  }

  /** Connects to the host and port of `url`; rejects (e.g. ECONNREFUSED) when the server does not accept. */
  static open(url: string): Promise<RawConnection> {
    const { hostname, port, host } = new URL(url);
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: hostname, port: Number(port) });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket, host));
      });
    });
  }

  get isClosed(): boolean {
    return this.ended !== undefined;
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Writes a request without a body and waits for its response. */
  get(target: string, headers: Record<string, string> = {}, timeoutMs = 5000): Promise<RawResponse> {
    this.write(requestHead('GET', target, this.host, headers));
    return this.nextResponse(timeoutMs);
  }

  /** The next response on this connection, in order. */
  nextResponse(timeoutMs = 5000): Promise<RawResponse> {
    const ready = this.responses.shift();
    if (ready) return Promise.resolve(ready);
    if (this.ended) return Promise.reject(new Error(`connection closed before a response${this.ended.error ? ` (${this.ended.error.code})` : ''}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no response within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter: Waiter = {
        resolve: (response) => { clearTimeout(timer); resolve(response); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      };
      this.waiters.push(waiter);
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private parse(atEnd: boolean): void {
    for (;;) {
      const headEnd = this.buffer.indexOf('\r\n\r\n');
      if (headEnd < 0) return;
      const [statusLine, ...lines] = this.buffer.subarray(0, headEnd).toString('latin1').split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '')?.[1]);
      const rest = this.buffer.subarray(headEnd + 4);
      const body = readBody(rest, headers, status, atEnd);
      if (!body) return;
      this.buffer = rest.subarray(body.consumed);
      this.deliver({ status, headers, body: body.text, at: performance.now() });
    }
  }

  private deliver(response: RawResponse): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(response);
    else this.responses.push(response);
  }
}

/** The body at the start of `data`, or undefined while it has not all arrived. */
function readBody(data: Buffer, headers: Record<string, string>, status: number, atEnd: boolean): { text: string; consumed: number } | undefined {
  if (status === 204 || status === 304) return { text: '', consumed: 0 };
  if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length']);
    return data.length >= length ? { text: data.subarray(0, length).toString('utf8'), consumed: length } : undefined;
  }
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const parts: Buffer[] = [];
    let offset = 0;
    for (;;) {
      const lineEnd = data.indexOf('\r\n', offset);
      if (lineEnd < 0) return undefined;
      const size = parseInt(data.subarray(offset, lineEnd).toString('latin1'), 16);
      if (size === 0) {
        // No trailers are sent by the server under test.
        return data.length >= lineEnd + 4 ? { text: Buffer.concat(parts).toString('utf8'), consumed: lineEnd + 4 } : undefined;
      }
      if (data.length < lineEnd + 2 + size + 2) return undefined;
      parts.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
      offset = lineEnd + 2 + size + 2;
    }
  }
  return atEnd ? { text: data.toString('utf8'), consumed: data.length } : undefined;
}
