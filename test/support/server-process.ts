/**
 * The provider as its own process (`node src/server.ts`, as `npm start` runs it), for what an
 * in-process server cannot show: signals and exit codes, the log lines it writes, its memory,
 * and several instances side by side.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { freePort, projectRoot } from '../../src/local/services.ts';
import { rssMb } from './faults.ts';

export interface ServerProcess {
  readonly url: string;
  readonly pid: number;
  /** Every line written to stdout and stderr so far (JSON log lines, mostly). */
  readonly output: readonly string[];
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>;
  signal(name: NodeJS.Signals): void;
  rssMb(): number;
  /** SIGTERM, then SIGKILL after 15 s; resolves when the process is gone. */
  stop(): Promise<void>;
}

export interface ServerProcessOptions {
  /** Variables on top of the test defaults (NODE_ENV=test, loopback, info logs). */
  env: Record<string, string>;
  /** Extra node flags, e.g. ['--max-old-space-size=192'] like `npm start`. */
  nodeFlags?: string[];
  port?: number;
}

async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(1000) })).ok;
  } catch {
    return false;
  }
}

export async function startServerProcess({ env, nodeFlags = [], port }: ServerProcessOptions): Promise<ServerProcess> {
  port ??= await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(process.execPath, [...nodeFlags, 'src/server.ts'], {
    cwd: projectRoot(),
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      NODE_ENV: 'test',
      ISSUER: url,
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      COOKIE_KEYS: 'test-cookie-key-0123456789abcdefghijklmnop',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const collect = (stream: NodeJS.ReadableStream) => {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop() ?? '';
      output.push(...lines);
    });
  };
  collect(child.stdout!);
  collect(child.stderr!);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  // Ready when it answers: the log line saying so is not written below LOG_LEVEL info.
  const deadline = Date.now() + 30_000;
  while (!(await answers(`${url}/healthz/live`))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the server process did not start:\n${output.join('\n')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    pid: child.pid!,
    output,
    exited,
    signal: (name) => { child.kill(name); },
    rssMb: () => rssMb(child.pid!),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      child.kill('SIGTERM');
      await exited;
      clearTimeout(killer);
    },
  };
}

/**
 * The server process for a start that must fail: resolves once it exits, with its exit code and
 * output lines. One that starts instead is killed after `limitMs` (and its code is null).
 */
export async function serverProcessExit({ env, nodeFlags = [], port }: ServerProcessOptions, limitMs = 60_000): Promise<{ code: number | null; output: string[] }> {
  port ??= await freePort();
  const child = spawn(process.execPath, [...nodeFlags, 'src/server.ts'], {
    cwd: projectRoot(),
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NODE_ENV: 'test', HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  for (const stream of [child.stdout!, child.stderr!]) stream.on('data', (chunk: Buffer) => { text += chunk.toString(); });
  const killer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
  clearTimeout(killer);
  return { code, output: text.split('\n').filter(Boolean) };
}
