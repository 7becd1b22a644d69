/** The bench's settings, read once from the environment (see the top of scripts/bench.ts). */
import os from 'node:os';

export const say = (message: string) => process.stderr.write(`[bench] ${message}\n`);

/** Every scenario BENCH_ONLY may name, in the order a round runs them. */
export const SCENARIOS = [
  'ratelimit', 'discovery', 'jwks', 'client_credentials', 'client_credentials_jwt', 'introspection',
  'signin', 'signin_mfa', 'doc_get', 'doc_list', 'doc_create', 'sweep',
] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

/** The heap settings `npm start` and the Docker image use by default. */
const PRODUCTION_NODE_ARGS = '--max-semi-space-size=4 --max-old-space-size=192';
/** TOTP time step in seconds (src/accounts/mfa.ts): a code is accepted during its step and the next. */
export const TOTP_PERIOD = 30;
/**
 * Sign-ins/s per core (the provider hashes on up to 4 threads) the default signin_mfa pool is sized
 * for (a 2-core machine did 6 to 11/s). Each account serves at least one sign-in in any window of
 * up to one time step, and one more for each step boundary the window crosses.
 */
const MFA_RATE_PER_CORE = 12;

function positive(name: string, fallback: number): number {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number`);
  return value;
}

const seconds = positive('BENCH_SECONDS', 5);
const signinConcurrency = positive('BENCH_SIGNIN_CONCURRENCY', 8);
const only = (process.env.BENCH_ONLY ?? SCENARIOS.join(',')).split(',').map((name) => name.trim()).filter(Boolean);
const unknown = only.filter((name) => !(SCENARIOS as readonly string[]).includes(name));
if (unknown.length) throw new Error(`BENCH_ONLY: unknown scenario ${unknown.join(', ')} (known: ${SCENARIOS.join(', ')})`);

export const options = {
  seconds,
  rounds: positive('BENCH_ROUNDS', 3),
  connections: positive('BENCH_CONNECTIONS', 32),
  signinConcurrency,
  mfaAccounts: positive('BENCH_MFA_ACCOUNTS', Math.max(
    4 * signinConcurrency,
    Math.ceil(Math.min(seconds, TOTP_PERIOD) * Math.max(25, MFA_RATE_PER_CORE * Math.min(os.availableParallelism(), 4))),
  )),
  documents: positive('BENCH_DOCUMENTS', 200),
  nodeArgs: (process.env.BENCH_NODE_ARGS ?? PRODUCTION_NODE_ARGS).split(' ').filter(Boolean),
  /** BENCH_COUNT_COMMANDS=0 runs src/server.ts itself, to see what the command counter costs. */
  countCommands: process.env.BENCH_COUNT_COMMANDS !== '0',
  selected: new Set(only as ScenarioName[]),
};
