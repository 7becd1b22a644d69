/**
 * Shared plumbing for the admin scripts: argument parsing, opening the same services the server
 * uses, printing one JSON answer on stdout, and usage errors that exit non-zero.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, loadConfig } from '../src/config.ts';
import { isAppError } from '../src/http/errors.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices, type Services } from '../src/services.ts';

export class UsageError extends Error {}

export function parse<const O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true as const, strict: true as const });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

export function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Runs one command with open services; maps every failure to a message and an exit code. */
export async function runCli(usage: string, command: (argv: string[], services: () => Promise<Services>) => Promise<void>): Promise<void> {
  let services: Services | undefined;
  const open = async () => {
    const config = loadConfig(process.env);
    services ??= await openServices(config, createLogger(config.logLevel === 'info' ? 'error' : config.logLevel, 2));
    return services;
  };
  try {
    await command(process.argv.slice(2), open);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`error: ${error.message}\n\n${usage}\n`);
      process.exitCode = 64; // EX_USAGE
    } else if (isAppError(error) || error instanceof ConfigError) {
      process.stderr.write(`error: ${error.message}\n`);
      process.exitCode = isAppError(error) && error.status === 404 ? 3 : 1;
    } else {
      process.stderr.write(`error: ${(error as Error).stack ?? String(error)}\n`);
      process.exitCode = 1;
    }
  } finally {
    await services?.close();
  }
}
