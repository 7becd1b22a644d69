/**
 * `npm run bench`: measures the provider on this machine and prints a table.
 *
 * It starts its own throwaway MongoDB-compatible server and Redis (or uses MONGODB_URI/REDIS_URL),
 * runs the provider as a separate process on loopback (NODE_ENV=test: plain-http cookies, production
 * code paths otherwise), seeds a client and a user,
 * and then drives it: autocannon for discovery, JWKS and client_credentials; a pool of concurrent
 * scripted browsers for complete authorization-code sign-ins (login + consent + token).
 * Peak RSS is the server process's VmHWM. Options: BENCH_SECONDS (default 10), BENCH_CONNECTIONS
 * (default 32), BENCH_SIGNIN_CONCURRENCY (default 8), BENCH_ONLY (comma-separated: discovery, jwks,
 * client_credentials, signin), BENCH_NODE_ARGS (node flags for the provider; default: the production heap
 * settings).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { Browser, readForm } from '../test/support/browser.ts';
import { loadConfig } from '../src/config.ts';
import { freePort, projectRoot, startEphemeralMongo, startEphemeralRedis, type LocalService } from '../src/local/services.ts';
import { createLogger } from '../src/observability/logger.ts';
import { storeNewJwks } from '../src/oidc/keys.ts';
import { openServices } from '../src/services.ts';

const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const signinConcurrency = Number(process.env.BENCH_SIGNIN_CONCURRENCY ?? 8);
/** The heap settings `npm start` and the Docker image use by default. */
const PRODUCTION_NODE_ARGS = '--max-semi-space-size=4 --max-old-space-size=192';
const only = new Set((process.env.BENCH_ONLY ?? 'discovery,jwks,client_credentials,signin').split(','));
const say = (m: string) => process.stderr.write(`[bench] ${m}\n`);

interface Row { name: string; rps: number; p50: number; p99: number; errors: number; total: number }

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
}

function peakRssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

async function cannon(name: string, options: autocannon.Options): Promise<Row> {
  const result = await autocannon({ connections, duration: seconds, ...options });
  const errors = result.errors + result.timeouts + result.non2xx;
  return { name, rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, errors, total: result.requests.total };
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
};

// Seed through the same services the CLI uses.
const seed = await openServices(loadConfig(env), createLogger('error', 2));
await storeNewJwks(seed.connection);
const service = await seed.clients.create({ name: 'bench service', grantTypes: ['client_credentials'], scope: 'openid' });
const webApp = await seed.clients.create({ name: 'bench web', redirectUris: ['http://127.0.0.1:9/cb'], grantTypes: ['authorization_code'], scope: 'openid email' });
const password = 'benchmark password 1234';
await seed.accounts.create({ email: 'bench@example.com', password });
await seed.close();

const server = spawn(process.execPath, [...(process.env.BENCH_NODE_ARGS ?? PRODUCTION_NODE_ARGS).split(' ').filter(Boolean), path.join(projectRoot(), 'src/server.ts')], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
for (let i = 0; ; i += 1) {
  try {
    if ((await fetch(`${issuer}/healthz`)).ok) break;
  } catch { /* not listening yet */ }
  if (i > 100) throw new Error('provider did not start');
  await new Promise((r) => setTimeout(r, 100));
}
say(`provider pid ${server.pid} at ${issuer}; ${seconds}s per scenario, ${connections} connections`);

const rows: Row[] = [];
try {
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
  if (only.has('signin')) rows.push(await signIns());
} finally {
  const rss = peakRssMb(server.pid!);
  server.kill('SIGTERM');
  await new Promise((r) => server.once('exit', r));
  await Promise.allSettled(started.map((s) => s.stop()));
  fs.rmSync(dir, { recursive: true, force: true });
  print(rows, rss);
}

/** One complete sign-in: authorize, login page, password, consent, code for tokens. */
async function signInOnce(): Promise<void> {
  const browser = new Browser();
  const auth = new URL(`${issuer}/auth`);
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  auth.search = new URLSearchParams({
    client_id: webApp.client_id, response_type: 'code', scope: 'openid email', redirect_uri: 'http://127.0.0.1:9/cb',
    code_challenge: challenge, code_challenge_method: 'S256', state: 'bench',
  }).toString();
  const login = await browser.follow(await browser.get(auth), issuer);
  const loginForm = readForm(await login.text(), login.url);
  const consent = await browser.follow(await browser.post(loginForm.action, { ...loginForm.fields, email: 'bench@example.com', password }), issuer);
  const consentForm = readForm(await consent.text(), consent.url);
  const back = await browser.follow(await browser.post(consentForm.action, { ...consentForm.fields, decision: 'allow' }), issuer);
  const code = new URL(back.headers.get('location')!).searchParams.get('code');
  if (!code) throw new Error(`sign-in ended without a code (${back.status})`);
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

async function signIns(): Promise<Row> {
  const latencies: number[] = [];
  let errors = 0;
  const deadline = Date.now() + seconds * 1000;
  const begin = performance.now();
  await Promise.all(Array.from({ length: signinConcurrency }, async () => {
    while (Date.now() < deadline) {
      const t0 = performance.now();
      try {
        await signInOnce();
        latencies.push(performance.now() - t0);
      } catch (error) {
        errors += 1;
        if (errors <= 3) say(`sign-in failed: ${(error as Error).message}`);
      }
    }
  }));
  const elapsed = (performance.now() - begin) / 1000;
  latencies.sort((a, b) => a - b);
  return { name: `complete sign-ins (x${signinConcurrency})`, rps: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, total: latencies.length };
}

function print(result: Row[], rss: number): void {
  const lines = [
    `| scenario | req/s | p50 ms | p99 ms | completed | errors |`,
    `|---|---:|---:|---:|---:|---:|`,
    ...result.map((r) => `| ${r.name} | ${r.rps.toFixed(0)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.total} | ${r.errors} |`),
    '',
    `Peak RSS of the provider process: ${rss.toFixed(0)} MB`,
    `Node ${process.version}, ${os.cpus().length} cores, database: ${process.env.MONGODB_URI ? 'MONGODB_URI' : 'local throwaway server'}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
