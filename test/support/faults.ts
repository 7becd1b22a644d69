/**
 * Fault injection for the resilience suites: a MongoDB-compatible server and a Redis of the
 * suite's own (the shared ones from global-setup must never be paused), which the test can
 * pause (SIGSTOP: the process holds its sockets and answers nothing, like a hung server), resume,
 * kill (SIGKILL: connections refused) and start again on the same port and data.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startEphemeralMongo, startEphemeralRedis, type LocalService } from '../../src/local/services.ts';

export interface FaultyService {
  /** Stable across restarts (same port). */
  readonly uri: string;
  pause(): void;
  resume(): void;
  /** SIGKILL, and waits until the process is gone. */
  kill(): Promise<void>;
  /** Starts the server again on the same port and data directory. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

const say = (message: string) => process.stderr.write(`[faults] ${message}\n`);

async function gone(pid: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`process ${pid} did not exit`);
}

/**
 * SIGSTOP takes effect at the process's next trip through the kernel: until /proc says it is
 * stopped, a command sent at once could still be answered. Waits (synchronously, at most 500 ms).
 */
function waitUntilStopped(pid: number): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  // Every thread: one of a multi-threaded server could still be finishing a reply.
  const stopped = () => fs.readdirSync(`/proc/${pid}/task`).every((task) => {
    try {
      // The state follows the command name, which is in parentheses and may contain spaces.
      return /^\S+ \(.*\) [tT] /s.test(fs.readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8'));
    } catch {
      return true; // a thread that has just exited sends nothing
    }
  });
  for (let i = 0; i < 500; i++) {
    if (stopped()) return;
    Atomics.wait(pause, 0, 0, 1);
  }
  throw new Error(`process ${pid} did not stop`);
}

async function faulty(start: (dir: string, port?: number) => Promise<LocalService>): Promise<FaultyService> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-fault-'));
  let service = await start(dir);
  const port = Number(new URL(service.uri).port);
  let paused = false;
  let alive = true;
  const signal = (name: NodeJS.Signals) => process.kill(service.pid, name);
  return {
    uri: service.uri,
    pause() {
      signal('SIGSTOP');
      paused = true;
      waitUntilStopped(service.pid);
    },
    resume() { signal('SIGCONT'); paused = false; },
    async kill() {
      signal('SIGKILL');
      paused = false;
      alive = false;
      await gone(service.pid);
    },
    async restart() {
      if (alive) throw new Error('restart() after kill() only');
      service = await start(dir, port);
      alive = true;
    },
    async stop() {
      if (paused) signal('SIGCONT');
      if (alive) await service.stop();
      alive = false;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A MongoDB-compatible server of the caller's own. Append a database name to `uri`
 * (`${uri}/name`) before use.
 */
export function startFaultyMongo(): Promise<FaultyService> {
  return faulty((dir, port) => startEphemeralMongo(dir, say, port));
}

export function startFaultyRedis(): Promise<FaultyService> {
  return faulty((dir, port) => startEphemeralRedis(dir, say, port));
}

/** Resident set size of a process in MB, from /proc (Linux). */
export function rssMb(pid: number = process.pid): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 'NaN');
  return kb / 1024;
}
