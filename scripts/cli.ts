/**
 * Shared plumbing for the admin scripts: argument parsing, opening the same services the server
 * uses, printing one JSON answer on stdout, and usage errors that exit non-zero.
 */
import { userInfo } from 'node:os';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, loadConfig } from '../src/config.ts';
import { isAppError } from '../src/http/errors.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices, type Services } from '../src/services.ts';
import type { AuditEvent } from '../src/audit/log.ts';

export class UsageError extends Error {}

/** Who runs an admin command, for the audit trail: `--actor NAME`, else the OS user. */
export type Operator = string;

const OPERATOR = /^[\w.@-]{1,100}$/;

/** Takes `--actor NAME` (or `--actor=NAME`) out of argv; the OS user when absent. */
function takeOperator(argv: string[]): { operator: Operator; rest: string[] } {
  const rest: string[] = [];
  let operator: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--actor' || arg.startsWith('--actor=')) {
      operator = arg === '--actor' ? argv[++i] : arg.slice('--actor='.length);
      if (operator === undefined || !OPERATOR.test(operator)) throw new UsageError('--actor expects a name (letters, digits, . _ @ -)');
    } else {
      rest.push(arg);
    }
  }
  if (operator === undefined) {
    try {
      operator = userInfo().username;
    } catch {
      operator = 'unknown';
    }
  }
  return { operator: OPERATOR.test(operator) ? operator : 'unknown', rest };
}

/**
 * Records one change an operator made from the CLI. The actor is `operator:NAME`, so
 * `audit tail --actor operator:NAME` finds it; `ip` says it came from the CLI.
 */
export async function recordChange(
  services: Pick<Services, 'audit'>, operator: Operator, action: string, target: string | null, details?: AuditEvent['details'],
): Promise<void> {
  await services.audit.record({
    actor: { sub: `operator:${operator}`, clientId: null }, action, target, outcome: 'success', ip: 'cli', requestId: null,
    ...(details ? { details } : {}),
  });
}

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

/**
 * Runs one command with open services; maps every failure to a message and an exit code. With
 * `operator: true` a global `--actor NAME` is taken out of argv and handed to the command (for
 * recordChange); audit.ts keeps `--actor` as its own filter.
 */
export async function runCli(
  usage: string,
  command: (argv: string[], services: () => Promise<Services>, operator: Operator) => Promise<void>,
  options: { operator?: boolean } = { operator: true },
): Promise<void> {
  let services: Services | undefined;
  const open = async () => {
    const config = loadConfig(process.env);
    services ??= await openServices(config, createLogger(config.logLevel === 'info' ? 'error' : config.logLevel, 2));
    return services;
  };
  try {
    const argv = process.argv.slice(2);
    const { operator, rest } = options.operator ? takeOperator(argv) : { operator: 'unknown', rest: argv };
    await command(rest, open, operator);
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
