/** Runs an admin script (scripts/NAME.ts) as its own process, the way an operator would. */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');

export interface ScriptResult { code: number; stdout: string; stderr: string }

/** The exit code and both outputs; a non-zero exit is a result, not an error. */
export async function runScript(script: string, args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<ScriptResult> {
  try {
    const { stdout, stderr } = await run('node', [`scripts/${script}.ts`, ...args], { cwd: root, env, timeout: timeoutMs });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw error;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
