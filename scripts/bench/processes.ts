/** Starting the measured node processes (the provider, bare oidc-provider) and reading their counters. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { CommandCounts } from './counted-server.ts';
import { options } from './options.ts';

/** How long a process gets to answer its first request (FerretDB start-up under load included). */
const START_TIMEOUT_MS = 30_000;

/** Runs `entry` (a path under the project) with the bench's node flags; resolves once `readyUrl` answers 2xx. */
export async function startNode(root: string, entry: string, env: Record<string, string>, stdout: number | 'ignore', readyUrl: string): Promise<ChildProcess> {
  const child: ChildProcess = spawn(process.execPath, [...options.nodeArgs, path.join(root, entry)], { env: { ...process.env, ...env }, stdio: ['ignore', stdout, 'inherit'] });
  let exited = false;
  child.once('exit', () => { exited = true; });
  const giveUp = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    try {
      if ((await fetch(readyUrl)).ok) return child;
    } catch { /* not listening yet */ }
    if (exited || Date.now() > giveUp) {
      child.kill('SIGTERM');
      throw new Error(`${entry} did not start${exited ? ` (it exited with ${child.exitCode})` : ` within ${START_TIMEOUT_MS / 1000} s`}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function stopNode(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

/** The counted server's running totals, or undefined when commands are not counted. */
export async function readCounts(countsUrl: string | undefined): Promise<CommandCounts | undefined> {
  if (!countsUrl) return undefined;
  return (await (await fetch(countsUrl)).json()) as CommandCounts;
}
