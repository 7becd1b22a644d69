/**
 * Clients that keep sending requests on keep-alive connections, one request at a time each, and
 * record every request: when it was written, whether it travelled on a connection that had
 * already carried one, and its answer or its error. A loop opens a new connection whenever the
 * server closes its one and ends when the server no longer accepts connections.
 */
import { performance } from 'node:perf_hooks';
import { RawConnection, requestHead, type RawResponse } from './raw-http.ts';

export interface LoadRecord {
  target: string;
  /** performance.now() when the request was written. */
  writtenAt: number;
  /** The connection had carried an earlier request (the server may close such a one at any time). */
  reused: boolean;
  response?: RawResponse;
  error?: string;
}

export interface KeepAliveLoad {
  readonly records: readonly LoadRecord[];
  /** Resolves when every loop has ended (the server refused a connection, or `maxMs` passed). */
  readonly ended: Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function startKeepAliveLoad(url: string, targets: readonly string[], maxMs = 30_000): KeepAliveLoad {
  const records: LoadRecord[] = [];
  const until = performance.now() + maxMs;

  async function loop(target: string): Promise<void> {
    while (performance.now() < until) {
      let connection: RawConnection;
      try {
        connection = await RawConnection.open(url);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ECONNREFUSED') return;
        // A connection accepted by the kernel and dropped by the server: try again.
        await sleep(10);
        continue;
      }
      let reused = false;
      while (!connection.isClosed && performance.now() < until) {
        const record: LoadRecord = { target, writtenAt: performance.now(), reused };
        records.push(record);
        connection.write(requestHead('GET', target, connection.host, { accept: 'application/json' }));
        try {
          record.response = await connection.nextResponse(10_000);
        } catch (error) {
          record.error = (error as Error).message;
          break;
        }
        if (/close/i.test(record.response.headers.connection ?? '')) {
          await connection.closed;
          break;
        }
        reused = true;
      }
      connection.destroy();
    }
  }

  return { records, ended: Promise.all(targets.map(loop)).then(() => undefined) };
}
