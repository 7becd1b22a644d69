/**
 * `npm run bench -- --scenario outage`: what callers see when the database hangs under load.
 *
 * Starts its own FerretDB (or mongod) and Redis, runs the provider as `npm start` does (its own
 * process, production heap flags), and sends requests that each need the database (an opaque
 * client_credentials token, a document read with a JWT, a new authorization request) at a fixed
 * arrival rate, open loop: arrivals do not slow down when answers do. After a warm-up it pauses
 * the database process (SIGSTOP) for BENCH_OUTAGE_SECONDS, resumes it, and keeps going.
 * It prints, per phase, the requests answered, their statuses, p50/p99/max time to answer, then the
 * peak RSS, whether the process survived, and the time from resuming the database until the
 * provider served a database-backed request and reported ready again.
 * Options: BENCH_OUTAGE_SECONDS (30), BENCH_OUTAGE_RATE (requests/s, 300), BENCH_NODE_ARGS.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config.ts';
import { freePort, projectRoot, startEphemeralMongo, startEphemeralRedis } from '../../src/local/services.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { keyRingFor } from '../../src/oidc/keys.ts';
import { openServices } from '../../src/services.ts';

const outageSeconds = Number(process.env.BENCH_OUTAGE_SECONDS ?? 30);
const rate = Number(process.env.BENCH_OUTAGE_RATE ?? 300);
const WARM_SECONDS = 5;
const AFTER_SECONDS = 15;
const REQUEST_GIVE_UP_MS = 30_000;
const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '--max-semi-space-size=4 --max-old-space-size=192').split(' ').filter(Boolean);
const say = (message: string) => process.stderr.write(`[bench outage] ${message}\n`);

type Phase = 'before' | 'outage' | 'after';
interface Answer { phase: Phase; status: number; ms: number }

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-outage-'));
const mongo = await startEphemeralMongo(path.join(dir, 'mongo'), say);
const redis = await startEphemeralRedis(path.join(dir, 'redis'), say);
const port = await freePort();
const issuer = `http://127.0.0.1:${port}`;
const env = {
  NODE_ENV: 'test', ISSUER: issuer, HOST: '127.0.0.1', PORT: String(port), MONGODB_URI: `${mongo.uri}/outage`, REDIS_URL: redis.uri,
  COOKIE_KEYS: 'bench-cookie-key-0123456789abcdefghijklmnop', LOG_LEVEL: 'warn', RATE_LIMIT_TOKEN_PER_CLIENT: '1000000/60',
  MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072',
  MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2',
};
const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
const form = { 'content-type': 'application/x-www-form-urlencoded' };

const seed = await openServices(loadConfig(env), createLogger('error', 2));
await keyRingFor(seed.connection, seed.config).generate();
const service = await seed.clients.create({ name: 'outage service', grantTypes: ['client_credentials'], scope: 'openid' });
const documents = await seed.clients.create({ name: 'outage documents', grantTypes: ['client_credentials'], scope: 'documents:read documents:write' });
const web = await seed.clients.create({ name: 'outage web', redirectUris: ['http://127.0.0.1:9/cb'], grantTypes: ['authorization_code'], scope: 'openid' });
await seed.close();

const server = spawn(process.execPath, [...nodeArgs, path.join(projectRoot(), 'src/server.ts')], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
let alive = true;
void exited.then(() => { alive = false; });

async function send(url: string, init: RequestInit = {}): Promise<{ status: number; ms: number; body: string }> {
  const started = performance.now();
  try {
    const response = await fetch(url, { ...init, redirect: 'manual', signal: AbortSignal.timeout(REQUEST_GIVE_UP_MS) });
    return { status: response.status, body: await response.text(), ms: performance.now() - started };
  } catch {
    return { status: 0, body: '', ms: performance.now() - started };
  }
}

for (let i = 0; (await send(`${issuer}/healthz/ready`)).status !== 200; i++) {
  if (i > 200) throw new Error('the provider did not start');
  await new Promise((r) => setTimeout(r, 100));
}
const tokenAnswer = await send(`${issuer}/token`, {
  method: 'POST', headers: { ...form, authorization: basic(documents.client_id, documents.client_secret!) },
  body: 'grant_type=client_credentials&scope=documents:read documents:write',
});
const accessToken = (JSON.parse(tokenAnswer.body) as { access_token: string }).access_token;
const created = await send(`${issuer}/api/v1/documents`, {
  method: 'POST', headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json' },
  body: JSON.stringify({ title: 'outage bench', content: 'x' }),
});
const documentUrl = `${issuer}/api/v1/documents/${(JSON.parse(created.body) as { id: string }).id}`;

const requests: [string, RequestInit][] = [
  [`${issuer}/token`, { method: 'POST', headers: { ...form, authorization: basic(service.client_id, service.client_secret!) }, body: 'grant_type=client_credentials' }],
  [documentUrl, { headers: { authorization: `Bearer ${accessToken}` } }],
  [`${issuer}/auth?client_id=${web.client_id}&response_type=code&scope=openid&redirect_uri=${encodeURIComponent('http://127.0.0.1:9/cb')}&code_challenge=${'a'.repeat(43)}&code_challenge_method=S256`, { headers: { accept: 'text/html' } }],
];

let phase: Phase = 'before';
let peakRss = 0;
const rssTimer = setInterval(() => {
  try {
    const kb = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${server.pid}/status`, 'utf8'))?.[1]);
    peakRss = Math.max(peakRss, kb / 1024);
  } catch { /* gone */ }
}, 250);

const answers: Promise<Answer>[] = [];
const total = WARM_SECONDS + outageSeconds + AFTER_SECONDS;
const begin = Date.now();
let resumedAt = 0;
let servedAgainMs: number | undefined;
let readyAgainMs: number | undefined;
say(`${rate} requests/s for ${total} s; database paused from ${WARM_SECONDS} s to ${WARM_SECONDS + outageSeconds} s`);
for (let i = 0; Date.now() - begin < total * 1000; i++) {
  const elapsed = (Date.now() - begin) / 1000;
  if (phase === 'before' && elapsed >= WARM_SECONDS) {
    process.kill(mongo.pid, 'SIGSTOP');
    phase = 'outage';
  } else if (phase === 'outage' && elapsed >= WARM_SECONDS + outageSeconds) {
    process.kill(mongo.pid, 'SIGCONT');
    phase = 'after';
    resumedAt = Date.now();
  }
  const [url, init] = requests[i % requests.length]!;
  const sentIn = phase;
  answers.push(send(url, init).then(({ status, ms }) => {
    if (sentIn === 'after' && url === documentUrl && status === 200) servedAgainMs ??= Date.now() - resumedAt;
    return { phase: sentIn, status, ms };
  }));
  if (phase === 'after' && readyAgainMs === undefined && i % rate === 0) {
    void send(`${issuer}/healthz/ready`).then(({ status }) => { if (status === 200) readyAgainMs ??= Date.now() - resumedAt; });
  }
  // Open loop: the next arrival is due at i/rate seconds, whatever the answers are doing.
  const due = begin + ((i + 1) * 1000) / rate;
  await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now())));
}
const results = await Promise.all(answers);
clearInterval(rssTimer);
const survived = alive;
server.kill('SIGTERM');
await exited;
await Promise.allSettled([mongo.stop(), redis.stop()]);
fs.rmSync(dir, { recursive: true, force: true });

const pct = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN);
const lines = ['| phase | answered | statuses | p50 ms | p99 ms | max ms |', '|---|---|---|---|---|---|'];
for (const name of ['before', 'outage', 'after'] as const) {
  const mine = results.filter((r) => r.phase === name);
  const times = mine.filter((r) => r.status !== 0).map((r) => r.ms).sort((a, b) => a - b);
  const counts = new Map<number, number>();
  for (const r of mine) counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
  const statuses = [...counts].sort(([a], [b]) => a - b).map(([s, n]) => `${s === 0 ? 'no answer' : s}: ${n}`).join(', ');
  lines.push(`| ${name} | ${times.length}/${mine.length} | ${statuses} | ${pct(times, 50).toFixed(1)} | ${pct(times, 99).toFixed(1)} | ${(times.at(-1) ?? NaN).toFixed(1)} |`);
}
console.log(lines.join('\n'));
console.log(`database paused for ${outageSeconds} s at ${rate} requests/s; peak RSS ${peakRss.toFixed(0)} MB; process ${survived ? 'stayed up' : 'DIED'}`);
console.log(`recovery after resuming the database: document served in ${servedAgainMs ?? 'never'} ms, ready in ${readyAgainMs ?? 'never'} ms`);
