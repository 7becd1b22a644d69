/**
 * `npm run bench`: measures the provider on this machine and prints a table (issue 10, "Measure it").
 *
 * It starts its own throwaway MongoDB-compatible server and Redis (or uses MONGODB_URI/REDIS_URL),
 * seeds clients and users through the services the CLI uses, builds the production files (dist/)
 * and runs the provider as a separate process on loopback (NODE_ENV=test: plain-http cookies,
 * production code paths otherwise) through scripts/bench/counted-server.ts, compiled: src/server.ts's start-up with the driver's command monitoring,
 * counting the MongoDB commands issued for requests. Next to it runs bare oidc-provider with its
 * memory adapter (scripts/bench/bare-provider.ts), the yardstick for client_credentials and
 * introspection. Both get the same node flags.
 *
 * The scenarios run in BENCH_ROUNDS interleaved rounds (round 1 runs each selected scenario once,
 * bare oidc-provider's right after ours, then round 2...), BENCH_SECONDS each. Each run reads, just
 * before and after, the CPU time (utime + stime in /proc/PID/stat) of the provider, the database
 * server and Redis (n/a for those given by MONGODB_URI/REDIS_URL: their pid is unknown) and the
 * command counter, and divides by the operations completed. The table prints the median of the
 * rounds for each column and the min–max of the rate; under it, the commands per operation by
 * command and collection, the ratio ours/bare with issue 10's goals, and what the provider's timers
 * issued meanwhile.
 *
 * Scenarios (BENCH_ONLY, comma-separated; default all): discovery, jwks; client_credentials (opaque:
 * the service client, scope openid) and client_credentials_jwt (the documents client and scopes: a
 * JWT); introspection (of an opaque client_credentials token, by the client it was issued to, with
 * token_type_hint=access_token; a sample before and after each run must say active: true); signin
 * (scripted browsers: login, consent the first time, token; BENCH_SIGNIN_CONCURRENCY at once) and
 * signin_mfa (with the TOTP step, from a pool of BENCH_MFA_ACCOUNTS accounts: scripts/bench/signin.ts);
 * doc_get, doc_list, doc_create (the documents API with a client_credentials JWT, after seeding
 * BENCH_DOCUMENTS documents; the provider's log then goes to a file and the JWKS fetches it logs
 * are counted: this should be about 1, not one per request); ratelimit (the sign-in's limiter work
 * against the same Redis, timed in this process, printed under the table); sweep (round 1 only: the
 * old single deleteMany against the expiry sweeper's ticks, scripts/bench/sweep.ts). Any non-2xx
 * answer counts as an error.
 *
 * Options: BENCH_SECONDS (per run, default 5), BENCH_ROUNDS (3), BENCH_CONNECTIONS (autocannon, 32),
 * BENCH_SIGNIN_CONCURRENCY (8), BENCH_MFA_ACCOUNTS, BENCH_DOCUMENTS (200), BENCH_ONLY,
 * BENCH_NODE_ARGS (node flags for the servers; default: the production heap settings),
 * BENCH_COUNT_COMMANDS=0 (run src/server.ts itself, without counting, to see what counting costs).
 * `npm run bench -- --scenario outage` is another bench: scripts/bench/outage.ts.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { loadConfig } from '../src/config.ts';
import { freePort, projectRoot, startEphemeralMongo, startEphemeralRedis, type LocalService } from '../src/local/services.ts';
import { createLogger } from '../src/observability/logger.ts';
import { keyRingFor } from '../src/oidc/keys.ts';
import { openServices } from '../src/services.ts';
import { countJwksFetches, createdDocumentsRemover, documentsAccessToken, seedDocuments } from './bench/documents.ts';
import { measure } from './bench/measure.ts';
import { options, say, SCENARIOS } from './bench/options.ts';
import { loadAverage, peakRssMb } from './bench/proc.ts';
import { startNode, stopNode } from './bench/processes.ts';
import { rateLimitCheck, type RateLimitLatency } from './bench/ratelimit.ts';
import { backgroundLine, bareRatios, commandBreakdown, table, type ScenarioResult } from './bench/report.ts';
import { scenarios, type System } from './bench/scenarios.ts';
import { mfaPool, seedMfaAccounts } from './bench/signin.ts';
import { median } from './bench/stats.ts';
import { sweepScenario } from './bench/sweep.ts';

const scenario = process.argv.includes('--scenario') ? process.argv[process.argv.indexOf('--scenario') + 1] : undefined;
if (scenario === 'outage') {
  await import('./bench/outage.ts');
  process.exit(0);
} else if (scenario !== undefined) {
  process.stderr.write(`unknown scenario "${scenario}" (known: outage; without --scenario the full bench runs)\n`);
  process.exit(64);
}

const began = performance.now();
const { selected } = options;
const machine = () => `load average ${loadAverage()}, node ${process.version}, ${os.cpus().length} cores`;
process.stdout.write(`Start: ${machine()}\n`);
const documentsSelected = ['doc_get', 'doc_list', 'doc_create'].some((name) => selected.has(name as never));
const bareSelected = selected.has('client_credentials') || selected.has('introspection');

const root = projectRoot();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-bench-'));
const started: LocalService[] = [];
const children: ChildProcess[] = [];
const startedMongo = process.env.MONGODB_URI ? undefined : await startEphemeralMongo(path.join(dir, 'mongo'), say);
const startedRedis = process.env.REDIS_URL ? undefined : await startEphemeralRedis(path.join(dir, 'redis'), say);
started.push(...[startedMongo, startedRedis].filter((s) => s !== undefined));
const mongoUri = process.env.MONGODB_URI ?? `${startedMongo!.uri}/bench`;
const redisUrl = process.env.REDIS_URL ?? startedRedis!.uri;
const port = await freePort();
const issuer = `http://127.0.0.1:${port}`;
const env = {
  NODE_ENV: 'test', ISSUER: issuer, HOST: '127.0.0.1', PORT: String(port), MONGODB_URI: mongoUri, REDIS_URL: redisUrl,
  COOKIE_KEYS: 'bench-cookie-key-0123456789abcdefghijklmnop', LOG_LEVEL: 'info',
  // As `npm start` and the image run it (see the Dockerfile).
  MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072',
  MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2',
  // Every simulated user signs in from 127.0.0.1: limits per IP would measure the limiter.
  RATE_LIMIT_SIGNIN_PER_IP: '1000000/60', RATE_LIMIT_SIGNIN_PER_ACCOUNT: '1000000/60', RATE_LIMIT_MFA_PER_ACCOUNT: '1000000/60',
  RATE_LIMIT_TOKEN_PER_CLIENT: '1000000/60',
};

/** A failure before the measurements must not leave the throwaway processes running. */
async function abandon(error: unknown): Promise<never> {
  await Promise.allSettled(children.map(stopNode));
  await Promise.allSettled(started.map((s) => s.stop()));
  fs.rmSync(dir, { recursive: true, force: true });
  throw error;
}

const password = 'cobalt lantern thistle 1234';
const seeded = await (async () => {
  const seed = await openServices(loadConfig(env), createLogger('error', 2));
  try {
    await keyRingFor(seed.connection, seed.config).generate();
    return {
      service: await seed.clients.create({ name: 'bench service', grantTypes: ['client_credentials'], scope: 'openid' }),
      webApp: await seed.clients.create({ name: 'bench web', redirectUris: ['http://127.0.0.1:9/cb'], grantTypes: ['authorization_code'], scope: 'openid email' }),
      documentsClient: await seed.clients.create({ name: 'bench documents', grantTypes: ['client_credentials'], scope: 'documents:read documents:write' }),
      account: await seed.accounts.create({ email: 'bench@example.com', password }),
      mfaAccounts: selected.has('signin_mfa') ? await seedMfaAccounts(seed, options.mfaAccounts, password) : [],
    };
  } finally {
    await seed.close();
  }
})().catch(abandon);

// The provider's JSON log is discarded unless the documents scenarios need it (a file costs the
// server no more than /dev/null, and this process reads it only once, after the server has exited).
const serverLog = path.join(dir, 'provider.log');
const serverStdout = documentsSelected ? fs.openSync(serverLog, 'w') : 'ignore';
// The production build, as `npm start` runs it: type stripping at load costs the server about
// 25 MB of memory and some start-up time that the compiled files do not.
say('building (tsc -p tsconfig.build.json)');
execFileSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
const countsPort = await freePort();
const provider = await startNode(root, options.countCommands ? 'dist/scripts/bench/counted-server.js' : 'dist/src/server.js',
  { ...env, BENCH_COUNTS_PORT: String(countsPort) }, serverStdout, `${issuer}/healthz`).catch(abandon);
children.push(provider);
if (typeof serverStdout === 'number') fs.closeSync(serverStdout);
const bareClient = { client_id: 'bench-bare', client_secret: randomBytes(24).toString('base64url') };
const barePort = await freePort();
const bare = bareSelected ? await startNode(root, 'dist/scripts/bench/bare-provider.js', {
  MALLOC_MMAP_THRESHOLD_: env.MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX: env.MALLOC_ARENA_MAX, NODE_ENV: 'test', BARE_PORT: String(barePort), BARE_CLIENT_ID: bareClient.client_id, BARE_CLIENT_SECRET: bareClient.client_secret,
}, 'ignore', `http://127.0.0.1:${barePort}/.well-known/openid-configuration`).catch(abandon) : undefined;
if (bare) children.push(bare);
say(`provider pid ${provider.pid} at ${issuer}${bare ? `, bare oidc-provider pid ${bare.pid}` : ''}; ${options.rounds} rounds of ${options.seconds} s per scenario, ${options.connections} connections`);

const results = new Map<string, ScenarioResult>();
const rateLimits: RateLimitLatency[] = [];
/** When the documents phase (first token to the end of the rounds) began and ended, in epoch ms. */
let documentsWindow: { from: number; to?: number } | undefined;
let peakRss: { provider: number; bare?: number } | undefined;
let remover: Awaited<ReturnType<typeof createdDocumentsRemover>> | undefined;
try {
  const processes = {
    node: provider.pid!, database: startedMongo?.pid, redis: startedRedis?.pid,
    countsUrl: options.countCommands ? `http://127.0.0.1:${countsPort}/` : undefined,
  };
  let documentId: string | undefined;
  if (documentsSelected) {
    documentsWindow = { from: Date.now() };
    documentId = await seedDocuments(issuer, await documentsAccessToken(issuer, seeded.documentsClient), options.documents);
    if (selected.has('doc_create')) remover = await createdDocumentsRemover(mongoUri);
  }
  const pool = selected.has('signin_mfa') ? mfaPool({ issuer, client: seeded.webApp, password }, seeded.mfaAccounts) : undefined;
  const bareSystem: System | undefined = bare ? { issuer: `http://127.0.0.1:${barePort}`, processes: { node: bare.pid! }, service: bareClient } : undefined;
  const list = scenarios({
    issuer, processes, service: seeded.service, documentsClient: seeded.documentsClient,
    signIn: { issuer, client: seeded.webApp, password }, mfaSignIn: pool?.take, documentId, removeCreatedDocuments: remover?.remove,
  }, bareSystem).filter((s) => selected.has(s.key));
  for (let round = 1; round <= options.rounds; round += 1) {
    say(`round ${round} of ${options.rounds}`);
    for (const key of SCENARIOS.filter((name) => selected.has(name))) {
      if (key === 'ratelimit') rateLimits.push(await rateLimitCheck(redisUrl, loadConfig(env)));
      if (key === 'sweep' && round === 1) await sweepScenario(root);
      for (const one of list.filter((s) => s.key === key)) {
        const { run, after } = await one.prepare();
        const measured = await measure(one.processes, run);
        if (after) measured.errors += await after();
        const id = `${one.system} ${one.key}`;
        if (!results.has(id)) results.set(id, { key: one.key, label: one.label, system: one.system, target: one.target, runs: [] });
        results.get(id)!.runs.push(measured);
        say(`  ${one.label}: ${measured.rate.toFixed(1)}/s, ${measured.ops} completed${measured.errors ? `, ${measured.errors} errors` : ''}`);
      }
    }
  }
  pool?.report();
  if (documentsWindow) documentsWindow.to = Date.now();
} finally {
  // NaN when a process is already gone (it died during the run: the error says why).
  const rssOf = (pid: number) => { try { return peakRssMb(pid); } catch { return NaN; } };
  peakRss = { provider: rssOf(provider.pid!), ...(bare ? { bare: rssOf(bare.pid!) } : {}) };
  await Promise.allSettled([...children.map(stopNode), remover?.close()]);
  await Promise.allSettled(started.map((s) => s.stop()));
  const jwksFetches = documentsWindow ? countJwksFetches(serverLog, documentsWindow.from, documentsWindow.to ?? Date.now()) : undefined;
  fs.rmSync(dir, { recursive: true, force: true });
  print([...results.values()], jwksFetches);
}

function print(rows: ScenarioResult[], jwksFetches: number | undefined): void {
  const breakdown = commandBreakdown(rows);
  const background = backgroundLine(rows);
  const rateLimit = rateLimits.length ? { p50: median(rateLimits.map((r) => r.p50)), p99: median(rateLimits.map((r) => r.p99)), checks: rateLimits[0]!.checks } : undefined;
  const lines = [
    ...table(rows),
    '',
    `Medians of ${options.rounds} round${options.rounds === 1 ? '' : 's'} of ${options.seconds} s; CPU per operation (completed, and those autocannon left in flight) from /proc/PID/stat; n/a: a server given by URL, pid unknown.`,
    ...bareRatios(rows),
    ...(breakdown.length ? ['MongoDB commands per operation, issued for requests (all rounds):', ...breakdown] : []),
    ...(background ? [background] : []),
    ...(options.countCommands ? [] : ['MongoDB commands not counted (BENCH_COUNT_COMMANDS=0: src/server.ts ran itself)']),
    ...(documentsSelected ? [`JWKS fetches during the documents scenarios: ${jwksFetches ?? 'unknown (the provider log could not be read)'}`] : []),
    ...(rateLimit ? [`Rate-limit check per sign-in (signinPerIp + signinPerAccount + lockout, ${rateLimit.checks} sequential, Redis; median of rounds): p50 ${rateLimit.p50.toFixed(3)} ms, p99 ${rateLimit.p99.toFixed(3)} ms; target p50 < 1 ms: ${rateLimit.p50 < 1 ? 'met' : 'missed'}`] : []),
    `Peak RSS of the provider process: ${peakRss!.provider.toFixed(0)} MB${peakRss!.bare === undefined ? '' : ` (bare oidc-provider: ${peakRss!.bare.toFixed(0)} MB)`}`,
    `Database: ${process.env.MONGODB_URI ? 'MONGODB_URI' : `local throwaway ${startedMongo!.kind}`}; Redis: ${process.env.REDIS_URL ? 'REDIS_URL' : 'local throwaway redis-server'}`,
    `End: ${machine()}; total time ${formatDuration((performance.now() - began) / 1000)}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

function formatDuration(seconds: number): string {
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}
