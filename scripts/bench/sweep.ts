/**
 * The expiry sweep, old against new: `npx node scripts/bench/sweep.ts`.
 *
 * Seeds SWEEP_DOCS documents (default 100,000, half expired, shaped like stored artifacts with
 * the adapter's indexes) into a scratch collection on MONGODB_URI, or on a throwaway server of its
 * own when that is not set, and sweeps them twice: once with the old single
 * `deleteMany({expiresAt: {$lt: now}})`, once with ExpirySweeper ticks run back to back. For each
 * it reports the time, ms per seeded document, the database server's CPU (when it runs here), the
 * worst event-loop delay in this process and the worst latency of a small write-then-read probe
 * sent every 20 ms meanwhile (what a request would have waited). It also times deleting one
 * batch of ids both ways the sweeper could (`$in` versus one statement per id).
 * Options: SWEEP_DOCS, SWEEP_BUDGET_MS, SWEEP_BATCH (the server's settings otherwise: SWEEP_SETTINGS),
 * SWEEP_LAYOUT=ordered (default: the expired half inserted first, as old artifacts are) or shuffled.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import mongoose, { type Collection } from 'mongoose';
import { ExpirySweeper } from '../../adapters/sweeper.ts';
import { SWEEP_SETTINGS } from '../../adapters/mongodb.ts';
import { startEphemeralMongo } from '../../src/local/services.ts';

export interface SweepRun {
  ms: number;
  msPerDoc: number;
  removed: number;
  /** CPU of the database server process, when its pid is known. */
  dbCpuMs?: number;
  maxEventLoopDelayMs: number;
  maxProbeMs: number;
  error?: string;
}

export interface SweepFigures {
  server: string;
  docs: number;
  expired: number;
  layout: 'ordered' | 'shuffled';
  old: SweepRun;
  ticks: SweepRun & { count: number; maxTickMs: number; totalTickMs: number; budgetMs: number; batchSize: number; lockHeldEvery: boolean };
  deleteBatch: { ids: number; inMs: number; perIdMs: number };
}

export interface MeasureOptions {
  budgetMs?: number;
  batchSize?: number;
  layout?: 'ordered' | 'shuffled';
  /** The database server's pid, to read its CPU time from /proc. */
  dbPid?: number;
}

const HOUR = 3_600_000;
const say = (message: string) => process.stderr.write(`[bench sweep] ${message}\n`);

interface ArtifactLike { _id: string; payload: Record<string, unknown>; expiresAt: Date }

function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  // utime and stime, fields 14 and 15, after the parenthesised command name.
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

async function seed(collection: Collection<ArtifactLike>, docs: number, layout: 'ordered' | 'shuffled'): Promise<number> {
  await collection.drop().catch(() => {});
  for (const key of ['payload.grantId', 'payload.accountId', 'expiresAt']) await collection.createIndex({ [key]: 1 });
  const now = Date.now();
  let expired = 0;
  for (let from = 0; from < docs; from += 1000) {
    const batch: ArtifactLike[] = [];
    for (let i = from; i < Math.min(docs, from + 1000); i += 1) {
      // shuffled: a fixed pseudo-random half (a multiplicative hash), the same in both runs.
      const isExpired = layout === 'ordered' ? i < docs / 2 : ((Math.imul(i + 1, 2654435761) >>> 16) & 1) === 1;
      if (isExpired) expired += 1;
      batch.push({
        _id: randomBytes(16).toString('base64url'),
        payload: {
          jti: randomBytes(16).toString('base64url'), kind: 'AccessToken', accountId: `account-${i % 997}`,
          clientId: 'bench-client', grantId: randomBytes(12).toString('base64url'), scope: 'openid profile email',
          iat: Math.floor(now / 1000), exp: Math.floor(now / 1000) + 3600, extra: { resource: 'https://api.example', gty: 'authorization_code' },
        },
        expiresAt: new Date(now + (isExpired ? -HOUR : HOUR)),
      });
    }
    await collection.insertMany(batch, { ordered: false });
  }
  return expired;
}

/** Watches what a request would see while `work` runs: event-loop delay and a write-then-read probe. */
async function observed<T>(probes: Collection<{ _id: string }>, dbPid: number | undefined, work: () => Promise<T>) {
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  let maxProbeMs = 0;
  let probing = false;
  const probe = setInterval(() => {
    if (probing) return; // one at a time: a stalled probe shows up as one long wait
    probing = true;
    const started = performance.now();
    const _id = randomBytes(8).toString('hex');
    probes.insertOne({ _id }).then(() => probes.findOne({ _id }))
      .catch(() => {})
      .finally(() => { maxProbeMs = Math.max(maxProbeMs, performance.now() - started); probing = false; });
  }, 20);
  const cpuBefore = cpuMs(dbPid);
  const started = performance.now();
  let result: T;
  let ms: number;
  try {
    result = await work();
    ms = performance.now() - started;
  } finally {
    clearInterval(probe);
    for (let i = 0; probing && i < 6000; i += 1) await sleep(5);
    loop.disable();
  }
  const cpu = cpuBefore === undefined ? undefined : cpuMs(dbPid)! - cpuBefore;
  return { result, ms, dbCpuMs: cpu, maxEventLoopDelayMs: loop.max / 1e6, maxProbeMs };
}

async function timeDeletes(collection: Collection<ArtifactLike>, batchSize: number) {
  const expiredIds = async () => (await collection.find({ expiresAt: { $lt: new Date() } }, { projection: { _id: 1 }, limit: batchSize, batchSize }).toArray()).map((doc) => doc._id);
  const forIn = await expiredIds();
  let started = performance.now();
  await collection.deleteMany({ _id: { $in: forIn } });
  const inMs = performance.now() - started;
  const perId = await expiredIds();
  started = performance.now();
  await collection.bulkWrite(perId.map((_id) => ({ deleteOne: { filter: { _id } } })), { ordered: false });
  return { ids: batchSize, inMs, perIdMs: performance.now() - started, removed: forIn.length + perId.length };
}

export async function measureSweep(uri: string, docs: number, options: MeasureOptions = {}): Promise<SweepFigures> {
  const layout = options.layout ?? 'ordered';
  const conn = await mongoose.createConnection(uri, { autoIndex: false }).asPromise();
  const suffix = randomBytes(4).toString('hex');
  const collection = conn.collection<ArtifactLike>(`bench_sweep_${suffix}`);
  const locks = conn.collection(`bench_sweep_locks_${suffix}`);
  const probes = conn.collection<{ _id: string }>(`bench_sweep_probe_${suffix}`);
  try {
    const plan = await collection.find({}).explain() as { serverInfo?: Record<string, unknown> };
    const server = plan.serverInfo && 'ferretdbVersion' in plan.serverInfo ? `ferretdb ${String(plan.serverInfo.ferretdbVersion).replace('unknown', '(version not reported)')}` : `mongodb ${String(plan.serverInfo?.version)}`;

    const expired = await seed(collection, docs, layout);
    const oldRun = await observed(probes, options.dbPid, async () => {
      try {
        return { removed: (await collection.deleteMany({ expiresAt: { $lt: new Date() } })).deletedCount, error: undefined };
      } catch (error) {
        return { removed: 0, error: error instanceof Error ? error.message.slice(-120) : String(error) };
      }
    });
    const { result: oldResult, ...oldFigures } = oldRun;
    const old: SweepRun = {
      ...oldFigures, msPerDoc: oldRun.ms / docs, removed: oldResult.removed, ...(oldResult.error ? { error: oldResult.error } : {}),
    };

    await seed(collection, docs, layout);
    const sweeper = new ExpirySweeper({
      collections: () => [collection as unknown as Collection], locks, owner: `bench-${suffix}`, graceMs: 0,
      ...(options.budgetMs === undefined ? {} : { budgetMs: options.budgetMs }),
      batchSize: options.batchSize ?? SWEEP_SETTINGS.batchSize,
    });
    const batchSize = options.batchSize ?? SWEEP_SETTINGS.batchSize;
    const deleteBatch = await timeDeletes(collection, batchSize);
    const tickTimes: number[] = [];
    let lockHeldEvery = true;
    const tickRun = await observed(probes, options.dbPid, async () => {
      let removed = deleteBatch.removed;
      // Bounded: even one document per tick would finish within this many.
      for (let i = 0; i < docs + 10; i += 1) {
        const tick = await sweeper.tick();
        tickTimes.push(tick.elapsedMs);
        lockHeldEvery &&= tick.lockHeld;
        removed += tick.removed;
        if (!tick.ranOutOfBudget) break;
        await sleep(5); // what the timer's interval would give the rest of the process
      }
      return removed;
    });
    const totalTickMs = tickTimes.reduce((sum, ms) => sum + ms, 0);
    return {
      server, docs, expired, layout, old,
      ticks: {
        ms: tickRun.ms, msPerDoc: totalTickMs / docs, removed: tickRun.result, dbCpuMs: tickRun.dbCpuMs,
        maxEventLoopDelayMs: tickRun.maxEventLoopDelayMs, maxProbeMs: tickRun.maxProbeMs,
        count: tickTimes.length, maxTickMs: Math.max(...tickTimes), totalTickMs,
        budgetMs: options.budgetMs ?? 50, batchSize, lockHeldEvery,
      },
      deleteBatch: { ids: deleteBatch.ids, inMs: deleteBatch.inMs, perIdMs: deleteBatch.perIdMs },
    };
  } finally {
    for (const scratch of [collection, locks, probes]) await scratch.drop().catch(() => {});
    await conn.close();
  }
}

function print(figures: SweepFigures): void {
  const ms = (value: number) => `${value.toFixed(1)} ms`;
  const cpu = (value: number | undefined) => (value === undefined ? '' : `, database CPU ${ms(value)}`);
  const { old, ticks, deleteBatch } = figures;
  console.log(`expiry sweep on ${figures.server}: ${figures.docs} documents, ${figures.expired} expired (${figures.layout})`);
  console.log(`  old deleteMany   ${ms(old.ms)} (${(old.msPerDoc * 1000).toFixed(1)} µs/doc), removed ${old.removed}${cpu(old.dbCpuMs)}`
    + `, max event-loop delay ${ms(old.maxEventLoopDelayMs)}, max probe ${ms(old.maxProbeMs)}${old.error ? `\n    failed: ${old.error}` : ''}`);
  console.log(`  sweeper ticks    ${ticks.count} ticks (budget ${ticks.budgetMs} ms, batch ${ticks.batchSize}), max tick ${ms(ticks.maxTickMs)}`
    + `, total ${ms(ticks.totalTickMs)} (${(ticks.msPerDoc * 1000).toFixed(1)} µs/doc) in ${ms(ticks.ms)}, removed ${ticks.removed}${cpu(ticks.dbCpuMs)}`
    + `, max event-loop delay ${ms(ticks.maxEventLoopDelayMs)}, max probe ${ms(ticks.maxProbeMs)}${ticks.lockHeldEvery ? '' : ' (lock not always held!)'}`);
  console.log(`  delete ${deleteBatch.ids} ids    $in ${ms(deleteBatch.inMs)}, one statement per id ${ms(deleteBatch.perIdMs)}`);
}

/**
 * The main bench's `sweep` scenario: this script in a process of its own (its event-loop figure is
 * then the sweep's alone), on MONGODB_URI when set, else on a throwaway server of its own, so the
 * bench's database keeps its state. SWEEP_DOCS defaults to 20,000 here. Prints the figures.
 */
export async function sweepScenario(root: string): Promise<void> {
  const env = { ...process.env, SWEEP_DOCS: process.env.SWEEP_DOCS ?? '20000' }; // 100,000 takes two minutes
  const child = spawn(process.execPath, [path.join(root, 'scripts/bench/sweep.ts')], { cwd: root, env, stdio: ['ignore', 'inherit', 'inherit'] });
  const code = await new Promise<number | null>((resolve, reject) => child.once('exit', resolve).once('error', reject));
  if (code !== 0) say(`the sweep scenario failed (exit ${code})`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const docs = Number(process.env.SWEEP_DOCS ?? 100_000);
  const layout = process.env.SWEEP_LAYOUT === 'shuffled' ? 'shuffled' : 'ordered';
  const options: MeasureOptions = {
    layout,
    ...(process.env.SWEEP_BUDGET_MS ? { budgetMs: Number(process.env.SWEEP_BUDGET_MS) } : {}),
    ...(process.env.SWEEP_BATCH ? { batchSize: Number(process.env.SWEEP_BATCH) } : {}),
  };
  if (process.env.MONGODB_URI) {
    print(await measureSweep(process.env.MONGODB_URI, docs, options));
  } else {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-sweep-'));
    const mongo = await startEphemeralMongo(path.join(dir, 'mongo'), say);
    try {
      print(await measureSweep(`${mongo.uri}/bench_sweep`, docs, { ...options, dbPid: mongo.pid }));
    } finally {
      await mongo.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}
