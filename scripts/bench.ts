/**
 * `npm run bench`: measures the provider on this machine and prints a table.
 *
 * It starts its own throwaway MongoDB-compatible server and Redis (or uses MONGODB_URI/REDIS_URL),
 * runs the provider as a separate process on loopback (NODE_ENV=test: plain-http cookies, production
 * code paths otherwise), seeds a client and a user,
 * and then drives it: autocannon for discovery, JWKS and client_credentials; a pool of concurrent
 * scripted browsers for complete authorization-code sign-ins (login + consent + token), then the same
 * with the TOTP second step (signin_mfa: login + code + consent + token, target >= 25/s; a page
 * other than the expected one, or a non-2xx answer, is an error in both). A TOTP code is accepted
 * once per account and 30-second step (the current or the previous one), so signin_mfa seeds a pool
 * of accounts with two-step verification turned on (one argon2 hash each; the seeding time is
 * printed), enrolled with the previous step's code so the current step stays free, and gives each
 * sign-in an idle account round-robin with a step it has not used yet: the bench never replays a
 * code. Should the pool run dry the workers wait for the next step and the bench says so (the rate
 * is then understated; raise BENCH_MFA_ACCOUNTS); autocannon
 * for the documents API under /api/v1 with a client_credentials JWT access token (seeded first with
 * 200 documents of ~1 KB through the API): doc_get (GET one document by id), doc_list (GET a page of
 * 20) and doc_create (POST a ~1 KB document), run in that order since creating grows the collection.
 * Any non-2xx answer counts as an error. The documents rows carry their targets (>= 2,000, 800 and
 * 500 req/s, p99 < 50 ms) in the table.
 * When a documents scenario runs, the provider's stdout (its JSON log) goes to a file in the
 * throwaway directory instead of being discarded, and the bench counts the 'fetching the provider
 * key set' lines logged from the first API request (seeding included) to the end of the documents
 * scenarios: the API verifies tokens against a cached JWKS, so this should be 1, not one per request.
 * The ratelimit scenario times, in this process against the same Redis, the limiter work each
 * sign-in does before hashing (signinPerIp and signinPerAccount consumed and the lockout read,
 * concurrently, as src/interactions/routes.ts does): p50/p99 of a few thousand sequential checks,
 * printed under the table (target: p50 < 1 ms).
 * Peak RSS is the server process's VmHWM. Options: BENCH_SECONDS (default 10), BENCH_CONNECTIONS
 * (default 32), BENCH_SIGNIN_CONCURRENCY (default 8), BENCH_MFA_ACCOUNTS (the signin_mfa pool; default:
 * enough for 12 sign-ins/s per core, up to 4 cores, and at least 25/s, over min(BENCH_SECONDS, 30) s:
 * 250 for 10 s on 2 cores), BENCH_DOCUMENTS (documents seeded, default 200), BENCH_ONLY (comma-separated: discovery, jwks,
 * client_credentials, signin, signin_mfa, doc_get, doc_list, doc_create, ratelimit; default: all), BENCH_NODE_ARGS (node
 * flags for the provider; default: the production heap settings).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import { generate } from 'otplib';
import { Browser, readForm, type Form } from '../test/support/browser.ts';
import { MfaError } from '../src/accounts/mfa.ts';
import { loadConfig } from '../src/config.ts';
import { freePort, projectRoot, startEphemeralMongo, startEphemeralRedis, type LocalService } from '../src/local/services.ts';
import { createLogger } from '../src/observability/logger.ts';
import { storeNewJwks } from '../src/oidc/keys.ts';
import { openServices, type Services } from '../src/services.ts';
import { Lockout } from '../src/security/lockout.ts';
import { LimiterStore, RateLimits } from '../src/security/rate-limit.ts';

// `npm run bench -- --scenario outage` is a scenario of its own (a database hang under load).
const scenario = process.argv.includes('--scenario') ? process.argv[process.argv.indexOf('--scenario') + 1] : undefined;
if (scenario === 'outage') {
  await import('./bench/outage.ts');
  process.exit(0);
} else if (scenario !== undefined) {
  process.stderr.write(`unknown scenario "${scenario}" (known: outage; without --scenario the full bench runs)\n`);
  process.exit(64);
}

const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const signinConcurrency = Number(process.env.BENCH_SIGNIN_CONCURRENCY ?? 8);
/** The heap settings `npm start` and the Docker image use by default. */
const PRODUCTION_NODE_ARGS = '--max-semi-space-size=4 --max-old-space-size=192';
const only = new Set((process.env.BENCH_ONLY ?? 'discovery,jwks,client_credentials,signin,signin_mfa,doc_get,doc_list,doc_create,ratelimit').split(','));
/** TOTP time step in seconds (src/accounts/mfa.ts): a code is accepted during its step and the next. */
const TOTP_PERIOD = 30;
/**
 * Sign-ins/s per core (the provider hashes on up to 4 threads) the default signin_mfa pool is sized
 * for (a 2-core machine did 6 to 11/s). Each account serves at least one sign-in in any window of
 * up to one time step, and one more for each step boundary the window crosses.
 */
const MFA_RATE_PER_CORE = 12;
const mfaAccountCount = Number(process.env.BENCH_MFA_ACCOUNTS ?? Math.max(
  4 * signinConcurrency,
  Math.ceil(Math.min(seconds, TOTP_PERIOD) * Math.max(25, MFA_RATE_PER_CORE * Math.min(os.availableParallelism(), 4))),
));
/** A sign-in is only given a previous-step code to plan with when this much of the current step is left. */
const PREVIOUS_STEP_MARGIN_MS = 10_000;
const RATE_LIMIT_CHECKS = 3000;
const DOC_SCENARIOS = ['doc_get', 'doc_list', 'doc_create'] as const;
const documentsSelected = DOC_SCENARIOS.some((name) => only.has(name));
/** Documents the API holds for the bench client before the documents scenarios start. */
const SEED_DOCUMENTS = Number(process.env.BENCH_DOCUMENTS ?? 200);
const SEED_CONCURRENCY = 4;
/** The message the documents API logs whenever it fetches the provider's JWKS (src/documents/token.ts). */
const JWKS_FETCH_MESSAGE = 'fetching the provider key set';
const say = (m: string) => process.stderr.write(`[bench] ${m}\n`);

/** unit: what follows the rate in the table (default " req/s"). */
interface Target { rps: number; p99?: number; unit?: string }
interface Row { name: string; rps: number; p50: number; p99: number; errors: number; total: number; target?: Target }

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
}

function peakRssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

async function cannon(name: string, options: autocannon.Options, target?: Target): Promise<Row> {
  const result = await autocannon({ connections, duration: seconds, ...options });
  const errors = result.errors + result.timeouts + result.non2xx;
  if (errors > 0) {
    const statuses = Object.entries(result.statusCodeStats ?? {}).filter(([code]) => !code.startsWith('2')).map(([code, { count }]) => `${code} x${count}`);
    say(`${name}: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx${statuses.length ? ` (${statuses.join(', ')})` : ''}`);
  }
  return { name, rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, errors, total: result.requests.total, ...(target ? { target } : {}) };
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-bench-'));
const started: LocalService[] = [];
const mongoUri = process.env.MONGODB_URI ?? (started.push(await startEphemeralMongo(path.join(dir, 'mongo'), say)), `${started.at(-1)!.uri}/bench`);
const redisUrl = process.env.REDIS_URL ?? (started.push(await startEphemeralRedis(path.join(dir, 'redis'), say)), started.at(-1)!.uri);
const port = await freePort();
const issuer = `http://127.0.0.1:${port}`;
const env = {
  NODE_ENV: 'test', ISSUER: issuer, HOST: '127.0.0.1', PORT: String(port), MONGODB_URI: mongoUri, REDIS_URL: redisUrl,
  COOKIE_KEYS: 'bench-cookie-key-0123456789abcdefghijklmnop', LOG_LEVEL: 'info',
  // As `npm start` and the image run it (see the Dockerfile).
  MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072',
  // Every simulated user signs in from 127.0.0.1: limits per IP would measure the limiter.
  RATE_LIMIT_SIGNIN_PER_IP: '1000000/60', RATE_LIMIT_SIGNIN_PER_ACCOUNT: '1000000/60', RATE_LIMIT_MFA_PER_ACCOUNT: '1000000/60',
  RATE_LIMIT_TOKEN_PER_CLIENT: '1000000/60',
};

/** A failure before the measurements must not leave the throwaway database and Redis running. */
async function abandon(error: unknown): Promise<never> {
  await Promise.allSettled(started.map((s) => s.stop()));
  fs.rmSync(dir, { recursive: true, force: true });
  throw error;
}

// Seed through the same services the CLI uses.
const password = 'cobalt lantern thistle 1234';
const { service, webApp, docClient, mfaAccounts } = await (async () => {
  const seed = await openServices(loadConfig(env), createLogger('error', 2));
  try {
    await storeNewJwks(seed.connection);
    return {
      service: await seed.clients.create({ name: 'bench service', grantTypes: ['client_credentials'], scope: 'openid' }),
      webApp: await seed.clients.create({ name: 'bench web', redirectUris: ['http://127.0.0.1:9/cb'], grantTypes: ['authorization_code'], scope: 'openid email' }),
      docClient: await seed.clients.create({ name: 'bench documents', grantTypes: ['client_credentials'], scope: 'documents:read documents:write' }),
      account: await seed.accounts.create({ email: 'bench@example.com', password }),
      mfaAccounts: only.has('signin_mfa') ? await seedMfaAccounts(seed, mfaAccountCount) : [],
    };
  } finally {
    await seed.close();
  }
})().catch(abandon);

// The provider's JSON log is discarded unless the documents scenarios need it (a file costs the
// server no more than /dev/null, and this process reads it only once, after the server has exited).
const serverLog = path.join(dir, 'provider.log');
const serverStdout = documentsSelected ? fs.openSync(serverLog, 'w') : 'ignore';
const server = spawn(process.execPath, [...(process.env.BENCH_NODE_ARGS ?? PRODUCTION_NODE_ARGS).split(' ').filter(Boolean), path.join(projectRoot(), 'src/server.ts')], { env: { ...process.env, ...env }, stdio: ['ignore', serverStdout, 'inherit'] });
if (typeof serverStdout === 'number') fs.closeSync(serverStdout);
for (let i = 0; ; i += 1) {
  try {
    if ((await fetch(`${issuer}/healthz`)).ok) break;
  } catch { /* not listening yet */ }
  if (i > 100) {
    server.kill('SIGTERM');
    await abandon(new Error('provider did not start'));
  }
  await new Promise((r) => setTimeout(r, 100));
}
say(`provider pid ${server.pid} at ${issuer}; ${seconds}s per scenario, ${connections} connections`);

const rows: Row[] = [];
/** When the documents phase (token, seeding, scenarios) began and ended, in the log's epoch ms. */
let documentsWindow: { from: number; to?: number } | undefined;
let jwksFetches: number | undefined;
let rateLimitLatency: RateLimitLatency | undefined;
try {
  if (only.has('ratelimit')) rateLimitLatency = await rateLimitCheck();
  if (only.has('discovery')) rows.push(await cannon('discovery', { url: `${issuer}/.well-known/openid-configuration` }));
  if (only.has('jwks')) rows.push(await cannon('JWKS', { url: `${issuer}/jwks` }));
  if (only.has('client_credentials')) rows.push(await cannon('client_credentials token', {
    url: `${issuer}/token`,
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${service.client_id}:${service.client_secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
  }));
  if (only.has('signin')) rows.push(await signIns('complete sign-ins', async () => () => signInOnce('bench@example.com')));
  if (only.has('signin_mfa')) {
    const pool = mfaPool(mfaAccounts);
    rows.push(await signIns('complete sign-ins with TOTP', (deadline) => pool.take(deadline), { rps: 25, unit: '/s' }));
    pool.report();
  }
  if (documentsSelected) {
    documentsWindow = { from: Date.now() };
    const token = await documentsAccessToken();
    const docId = await seedDocuments(token);
    const bearer = { authorization: `Bearer ${token}` };
    if (only.has('doc_get')) rows.push(await cannon('documents: GET by id', { url: `${issuer}/api/v1/documents/${docId}`, headers: bearer }, { rps: 2000, p99: 50 }));
    if (only.has('doc_list')) rows.push(await cannon('documents: list (limit=20)', { url: `${issuer}/api/v1/documents?limit=20`, headers: bearer }, { rps: 800, p99: 50 }));
    if (only.has('doc_create')) rows.push(await cannon('documents: create (~1 KB)', {
      url: `${issuer}/api/v1/documents`,
      method: 'POST',
      headers: { ...bearer, 'content-type': 'application/json' },
      body: JSON.stringify(documentBody('bench create')),
    }, { rps: 500, p99: 50 }));
    documentsWindow.to = Date.now();
  }
} finally {
  const rss = peakRssMb(server.pid!);
  server.kill('SIGTERM');
  await new Promise((r) => server.once('exit', r));
  await Promise.allSettled(started.map((s) => s.stop()));
  if (documentsWindow) jwksFetches = countJwksFetches(serverLog, documentsWindow.from, documentsWindow.to ?? Date.now());
  fs.rmSync(dir, { recursive: true, force: true });
  print(rows, rss, jwksFetches, rateLimitLatency);
}

/** RFC 6749 section 2.3.1: client id and secret are form-urlencoded before HTTP Basic. */
function basicAuth(id: string, secret: string): string {
  const encode = (value: string) => new URLSearchParams({ v: value }).toString().slice(2);
  return `Basic ${Buffer.from(`${encode(id)}:${encode(secret)}`).toString('base64')}`;
}

/** A client_credentials JWT access token for the documents API (the default resource for its scopes). */
async function documentsAccessToken(): Promise<string> {
  const response = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(docClient.client_id, docClient.client_secret!), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'documents:read documents:write' }),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`documents access token: token endpoint answered ${response.status}: ${text.slice(0, 300)}`);
  const token = (JSON.parse(text) as { access_token?: unknown }).access_token;
  if (typeof token !== 'string' || token.split('.').length !== 3) {
    throw new Error(`documents access token: expected a JWT access token, got ${typeof token === 'string' ? `an opaque token of ${token.length} characters` : text.slice(0, 300)}`);
  }
  return token;
}

/** A document of ~1 KB of content and two tags. */
function documentBody(title: string) {
  const sentence = 'The quick brown fox jumps over the lazy dog while the benchmark measures the documents API. ';
  return { title, content: sentence.repeat(Math.ceil(1024 / sentence.length)).slice(0, 1024), tags: ['bench', 'load-test'] };
}

/** Creates SEED_DOCUMENTS documents through the API; returns the id of one of them. */
async function seedDocuments(token: string): Promise<string> {
  let next = 0;
  let kept: string | undefined;
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, async () => {
    while (next < SEED_DOCUMENTS) {
      const n = next++;
      const response = await fetch(`${issuer}/api/v1/documents`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(documentBody(`bench seed ${n}`)),
      });
      const text = await response.text();
      if (response.status !== 201) throw new Error(`seeding documents: POST /api/v1/documents answered ${response.status}: ${text.slice(0, 300)}`);
      const { id } = JSON.parse(text) as { id?: unknown };
      if (typeof id !== 'string') throw new Error(`seeding documents: the answer has no id: ${text.slice(0, 300)}`);
      kept ??= id;
    }
  }));
  const check = await fetch(`${issuer}/api/v1/documents/${kept}`, { headers: { authorization: `Bearer ${token}` } });
  if (check.status !== 200) throw new Error(`seeding documents: GET of a seeded document answered ${check.status}`);
  say(`seeded ${SEED_DOCUMENTS} documents`);
  return kept!;
}

/**
 * How many JWKS fetches the provider logged between two instants; also reports (on stderr) the
 * first few errors it logged in that window, which would otherwise go unseen.
 */
function countJwksFetches(file: string, from: number, to: number): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  let fetches = 0;
  let failures = 0;
  for (let start = 0; start < text.length;) {
    const end = text.indexOf('\n', start);
    const line = text.slice(start, end === -1 ? text.length : end);
    start = end === -1 ? text.length : end + 1;
    const interesting = line.includes(JWKS_FETCH_MESSAGE) || /"level":(5|6)0\b/.test(line);
    if (!interesting) continue;
    let entry: { level?: number; time?: number; msg?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue;
    }
    if (typeof entry.time !== 'number' || entry.time < from || entry.time > to) continue;
    if (entry.msg === JWKS_FETCH_MESSAGE) fetches += 1;
    if ((entry.level ?? 0) >= 50 && (failures += 1) <= 3) say(`provider logged an error: ${line.slice(0, 500)}`);
  }
  if (failures > 3) say(`provider logged ${failures} errors during the documents scenarios`);
  return fetches;
}

/**
 * The form of the page `response` should be: a 200 whose first form posts to `/interaction/<uid>/<step>`.
 * Anything else (an error page, the same page again with a refusal, a redirect) fails the sign-in.
 */
async function expectForm(response: Response, step: string): Promise<Form> {
  const html = await response.text();
  if (response.status !== 200) {
    // The page's title and error message say more than its first bytes (the stylesheet).
    const said = [/<title>([^<]*)<\/title>/i.exec(html)?.[1], /<p class="error"[^>]*>([^<]*)<\/p>/i.exec(html)?.[1]].filter(Boolean).join(': ');
    throw new Error(`expected the ${step} page, got ${response.status} from ${response.url}${said ? ` (${said})` : html ? `: ${html.slice(0, 300)}` : ''}`);
  }
  const form = readForm(html, response.url);
  if (!new URL(form.action).pathname.endsWith(`/${step}`)) throw new Error(`expected the ${step} page, got a form posting to ${form.action}`);
  return form;
}

/**
 * One complete sign-in: authorize, login page, password, the code page when `totp` is given (it
 * yields the code to type), consent, code for tokens.
 */
async function signInOnce(email: string, totp?: () => Promise<string>): Promise<void> {
  const browser = new Browser();
  const auth = new URL(`${issuer}/auth`);
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  auth.search = new URLSearchParams({
    client_id: webApp.client_id, response_type: 'code', scope: 'openid email', redirect_uri: 'http://127.0.0.1:9/cb',
    code_challenge: challenge, code_challenge_method: 'S256', state: 'bench',
  }).toString();
  const login = await browser.follow(await browser.get(auth), issuer);
  const loginForm = await expectForm(login, 'login');
  let next = await browser.follow(await browser.post(loginForm.action, { ...loginForm.fields, email, password }), issuer);
  if (totp) {
    const mfaForm = await expectForm(next, 'mfa');
    next = await browser.follow(await browser.post(mfaForm.action, { ...mfaForm.fields, code: await totp() }), issuer);
  }
  // Consent is asked once per account and client; later sign-ins go straight back with a code.
  const remembered = next.headers.get('location')?.startsWith('http://127.0.0.1:9/cb') === true;
  const back = remembered ? next : await (async () => {
    const consentForm = await expectForm(next, 'consent');
    return browser.follow(await browser.post(consentForm.action, { ...consentForm.fields, decision: 'allow' }), issuer);
  })();
  const location = back.headers.get('location');
  const code = location ? new URL(location).searchParams.get('code') : null;
  if (!code) throw new Error(`sign-in ended without a code (${back.status}${location ? ` to ${location}` : ''})`);
  const token = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${webApp.client_id}:${webApp.client_secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: 'http://127.0.0.1:9/cb', code_verifier: verifier }),
  });
  if (token.status !== 200) throw new Error(`token endpoint answered ${token.status}`);
}

/**
 * Runs sign-ins from BENCH_SIGNIN_CONCURRENCY workers for BENCH_SECONDS. `next` gives a worker its
 * next sign-in (untimed: it may wait for an account), or nothing when none can start before the deadline.
 */
async function signIns(name: string, next: (deadline: number) => Promise<(() => Promise<void>) | undefined>, target?: Target): Promise<Row> {
  const latencies: number[] = [];
  let errors = 0;
  const deadline = Date.now() + seconds * 1000;
  const begin = performance.now();
  await Promise.all(Array.from({ length: signinConcurrency }, async () => {
    while (Date.now() < deadline) {
      const signIn = await next(deadline);
      if (!signIn) break;
      const t0 = performance.now();
      try {
        await signIn();
        latencies.push(performance.now() - t0);
      } catch (error) {
        errors += 1;
        if (errors <= 3) say(`${name}: sign-in failed: ${(error as Error).message}`);
      }
    }
  }));
  const elapsed = (performance.now() - begin) / 1000;
  latencies.sort((a, b) => a - b);
  return { name: `${name} (x${signinConcurrency})`, rps: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, total: latencies.length, ...(target ? { target } : {}) };
}

/** An account of the signin_mfa pool; usedSteps: the TOTP steps whose code it has used (or will). */
interface MfaAccount { email: string; secret: string; usedSteps: Set<number>; busy: boolean }

function totpStep(ms = Date.now()): number {
  return Math.floor(ms / 1000 / TOTP_PERIOD);
}

function totpCode(secret: string, step: number): Promise<string> {
  return generate({ secret, epoch: step * TOTP_PERIOD });
}

/**
 * A step the provider accepts a code of now that `account` has not used, the previous one first
 * (but only with `marginMs` of the current step left, for the code to arrive in time).
 */
function freeStep(account: MfaAccount, marginMs: number, now = Date.now()): number | undefined {
  const current = totpStep(now);
  if ((current + 1) * TOTP_PERIOD * 1000 - now >= marginMs && !account.usedSteps.has(current - 1)) return current - 1;
  return account.usedSteps.has(current) ? undefined : current;
}

/**
 * Creates `count` accounts with two-step verification on, each enrolled with the code of the
 * previous time step so that the current one stays free for the benchmark.
 */
async function seedMfaAccounts(seed: Services, count: number): Promise<MfaAccount[]> {
  const begin = performance.now();
  const accounts: MfaAccount[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, async () => {
    while (next < count) {
      const email = `bench-mfa-${next++}@example.com`;
      const { id } = await seed.accounts.create({ email, password });
      const { secret } = await seed.mfa.beginEnrolment(id, email);
      // Retried once: the step may change between computing the code and the service checking it.
      for (let attempt = 0; ; attempt += 1) {
        const step = totpStep() - 1;
        try {
          await seed.mfa.confirmEnrolment(id, await totpCode(secret, step));
          accounts.push({ email, secret, usedSteps: new Set([step]), busy: false });
          break;
        } catch (error) {
          if (attempt > 0 || !(error instanceof MfaError && error.code === 'mfa_invalid_code')) throw error;
        }
      }
    }
  }));
  say(`seeded ${count} accounts with two-step verification in ${((performance.now() - begin) / 1000).toFixed(1)} s`);
  return accounts;
}

/**
 * Hands out the signin_mfa accounts round-robin: an idle account with a step left, whose code is
 * chosen when the code page is reached. When every account has used both steps the provider
 * accepts, workers wait for the next step and report() says so.
 */
function mfaPool(accounts: MfaAccount[]) {
  let cursor = 0;
  let dry = 0;
  let waitedMs = 0;
  let previousStepCodes = 0;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  return {
    async take(deadline: number): Promise<(() => Promise<void>) | undefined> {
      for (;;) {
        let busyWithSteps = false;
        for (let i = 0; i < accounts.length; i += 1) {
          const account = accounts[(cursor + i) % accounts.length]!;
          if (freeStep(account, PREVIOUS_STEP_MARGIN_MS) === undefined) continue;
          if (account.busy) {
            busyWithSteps = true;
            continue;
          }
          cursor = (cursor + i + 1) % accounts.length;
          account.busy = true;
          return () => signInOnce(account.email, async () => {
            // One second is plenty for the POST to reach the provider on loopback.
            const step = freeStep(account, 1000);
            if (step === undefined) throw new Error(`${account.email}: no unused TOTP step left when the code page came (more than ${PREVIOUS_STEP_MARGIN_MS / 1000 - 1} s after the sign-in began)`);
            account.usedSteps.add(step);
            if (step < totpStep()) previousStepCodes += 1;
            return totpCode(account.secret, step);
          }).finally(() => { account.busy = false; });
        }
        const now = Date.now();
        const wait = busyWithSteps ? 5 : (totpStep(now) + 1) * TOTP_PERIOD * 1000 - now + 50;
        if (!busyWithSteps) {
          dry += 1;
          waitedMs += Math.min(wait, deadline - now);
        }
        if (now + wait >= deadline) return undefined;
        await sleep(wait);
      }
    },
    report(): void {
      say(`signin_mfa: ${accounts.length} accounts; ${previousStepCodes} codes typed were of the previous time step`);
      if (dry > 0) {
        say(`signin_mfa: THE ACCOUNT POOL RAN DRY ${dry} times (waiting ${(waitedMs / 1000).toFixed(1)} worker-seconds in all for the next TOTP step): the rate is understated; raise BENCH_MFA_ACCOUNTS (now ${accounts.length})`);
      }
    },
  };
}

interface RateLimitLatency { p50: number; p99: number; checks: number }

/** Times the sign-in's limiter work (see the top of this file); the keys are the bench's own. */
async function rateLimitCheck(): Promise<RateLimitLatency> {
  const redis = new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
  await new Promise((resolve) => redis.once('ready', resolve));
  try {
    const config = loadConfig(env);
    const store = new LimiterStore(redis, createLogger('error', 2));
    const rateLimits = new RateLimits(config.rateLimits, store);
    const lockout = new Lockout(config.lockout, store);
    const [ip, email] = ['192.0.2.1', 'ratelimit-bench@example.com'];
    const latencies: number[] = [];
    // The first checks load the Lua script into Redis and warm up the JIT; they are not counted.
    for (let i = -200; i < RATE_LIMIT_CHECKS; i += 1) {
      const t0 = performance.now();
      await Promise.all([rateLimits.consume('signinPerIp', ip), rateLimits.consume('signinPerAccount', email), lockout.lockedFor(email)]);
      if (i >= 0) latencies.push(performance.now() - t0);
    }
    latencies.sort((a, b) => a - b);
    return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), checks: latencies.length };
  } finally {
    redis.disconnect();
  }
}

function targetCell(r: Row): string {
  if (!r.target) return '';
  const met = r.rps >= r.target.rps && (r.target.p99 === undefined || r.p99 < r.target.p99) && r.errors === 0;
  return `>= ${r.target.rps.toLocaleString('en-US')}${r.target.unit ?? ' req/s'}${r.target.p99 === undefined ? '' : `, p99 < ${r.target.p99} ms`}: ${met ? 'met' : 'missed'}`;
}

function print(result: Row[], rss: number, jwksFetchCount: number | undefined, rateLimit: RateLimitLatency | undefined): void {
  const lines = [
    `| scenario | req/s | p50 ms | p99 ms | completed | errors | target |`,
    `|---|---:|---:|---:|---:|---:|---|`,
    ...result.map((r) => `| ${r.name} | ${r.rps.toFixed(0)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.total} | ${r.errors} | ${targetCell(r)} |`),
    '',
    ...(documentsSelected ? [`JWKS fetches during documents scenarios: ${jwksFetchCount ?? 'unknown (the provider log could not be read)'}`] : []),
    ...(rateLimit ? [`Rate-limit check per sign-in (signinPerIp + signinPerAccount + lockout, ${rateLimit.checks} sequential, Redis): p50 ${rateLimit.p50.toFixed(3)} ms, p99 ${rateLimit.p99.toFixed(3)} ms; target p50 < 1 ms: ${rateLimit.p50 < 1 ? 'met' : 'missed'}`] : []),
    `Peak RSS of the provider process: ${rss.toFixed(0)} MB`,
    `Node ${process.version}, ${os.cpus().length} cores, database: ${process.env.MONGODB_URI ? 'MONGODB_URI' : 'local throwaway server'}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
