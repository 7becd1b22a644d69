/**
 * Data migrations (src/migrations/) against the real MongoDB-compatible server: order, records,
 * re-runs, the lock between concurrent runners (in one process and as `npm run migrate`
 * processes), stale and live locks, the production start refused while one is pending, and the
 * first migration carrying real legacy pointers over so the adapter finds their artifacts.
 */
import { jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import mongoose, { type Connection } from 'mongoose';
import { ArtifactStore } from '../adapters/mongodb.ts';
import { projectRoot } from '../src/local/services.ts';
import { migration as legacyPointers } from '../src/migrations/001-legacy-pointers.ts';
import { isFerretDb } from '../src/migrations/helpers.ts';
import { MIGRATIONS } from '../src/migrations/list.ts';
import { LOCK_COLLECTION, MigrationLockBusyError, type LockDocument } from '../src/migrations/lock.ts';
import { checkList, migrationStatus, runMigrations, RECORDS_COLLECTION } from '../src/migrations/runner.ts';
import type { Migration, MigrationRecord } from '../src/migrations/types.ts';
import { createLogger } from '../src/observability/logger.ts';
import { testMongoUri, testRedisUrl } from './support/env.ts';
import { serverProcessExit, startServerProcess } from './support/server-process.ts';

jest.setTimeout(180_000);
const run = promisify(execFile);
const quiet = createLogger('silent');
const connections: Connection[] = [];

async function connect(uri = testMongoUri('migrations')): Promise<Connection> {
  const connection = await mongoose.createConnection(uri, { autoIndex: false }).asPromise();
  connections.push(connection);
  return connection;
}

afterAll(async () => {
  for (const connection of connections) {
    await connection.dropDatabase().catch(() => {});
    await connection.close();
  }
});

/** A logger whose lines the test reads. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  return { lines, logger: createLogger('info', { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>); } }) };
}

/** Migrations that count their runs in `runs` ({_id: id, count}); `slowMs` keeps one busy. */
function counting(ids: string[], slowMs = 0): Migration[] {
  return ids.map((id) => ({
    id,
    description: `test ${id}`,
    async up({ connection }) {
      await connection.collection<{ _id: string; count: number }>('runs').updateOne({ _id: id }, { $inc: { count: 1 } }, { upsert: true });
      if (slowMs) await new Promise((resolve) => setTimeout(resolve, slowMs));
      return { marked: id };
    },
  }));
}

const runsOf = async (connection: Connection) =>
  Object.fromEntries((await connection.collection<{ _id: string; count: number }>('runs').find({}).toArray()).map((r) => [r._id, r.count]));

/** `node scripts/migrate.ts ARGS` with an environment for `uri`. */
async function migrateCli(uri: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NODE_ENV: 'test', MONGODB_URI: uri, REDIS_URL: testRedisUrl(), LOG_LEVEL: 'error' };
  try {
    const { stdout, stderr } = await run(process.execPath, ['scripts/migrate.ts', ...args], { cwd: projectRoot(), env, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw error;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('the list', () => {
  test('every NNN-*.ts file of src/migrations is listed once, in order, under its file name', () => {
    const files = fs.readdirSync(path.join(projectRoot(), 'src/migrations')).filter((f) => /^\d{3}-.*\.ts$/.test(f)).sort();
    expect(MIGRATIONS.map((m) => `${m.id}.ts`)).toEqual(files);
    expect(() => checkList(MIGRATIONS)).not.toThrow();
    expect(() => checkList(counting(['002-b', '001-a']))).toThrow(/listed after/);
    expect(() => checkList(counting(['001-a', '001-a']))).toThrow(/listed after/);
    expect(() => checkList(counting(['1-a']))).toThrow(/not NNN-name/);
  });
});

describe('runner', () => {
  test('applies pending migrations in order and records each; a re-run does nothing; an appended one runs alone', async () => {
    const connection = await connect();
    const order: string[] = [];
    const list = counting(['001-first', '002-second', '003-third']).map((m) => ({ ...m, up: async (c: Parameters<Migration['up']>[0]) => { order.push(m.id); return m.up(c); } }));
    expect((await migrationStatus(connection, list)).pending.map((p) => p.id)).toEqual(['001-first', '002-second', '003-third']);

    const first = await runMigrations(connection, quiet, { list });
    expect(order).toEqual(['001-first', '002-second', '003-third']);
    expect(first.applied.map((r) => r._id)).toEqual(order);
    const records = await connection.collection<MigrationRecord>(RECORDS_COLLECTION).find({}).sort({ _id: 1 }).toArray();
    expect(records).toHaveLength(3);
    for (const record of records) {
      expect(record).toMatchObject({ description: `test ${record._id}`, pid: process.pid, result: { marked: record._id } });
      expect(typeof record.host).toBe('string');
      expect(record.finishedAt!.getTime()).toBeGreaterThanOrEqual(record.startedAt.getTime());
      expect(record.durationMs).toBe(record.finishedAt!.getTime() - record.startedAt.getTime());
    }

    const again = await runMigrations(connection, quiet, { list });
    expect(again).toEqual({ applied: [], alreadyApplied: ['001-first', '002-second', '003-third'] });
    expect(await connection.collection(RECORDS_COLLECTION).find({}).sort({ _id: 1 }).toArray()).toEqual(records);
    expect(await runsOf(connection)).toEqual({ '001-first': 1, '002-second': 1, '003-third': 1 });

    const longer = [...list, ...counting(['004-fourth'])];
    expect((await migrationStatus(connection, longer)).pending.map((p) => p.id)).toEqual(['004-fourth']);
    expect((await runMigrations(connection, quiet, { list: longer })).applied.map((r) => r._id)).toEqual(['004-fourth']);
    expect(await runsOf(connection)).toEqual({ '001-first': 1, '002-second': 1, '003-third': 1, '004-fourth': 1 });
  });

  test('the real list applies on an empty database, and then nothing is pending', async () => {
    const connection = await connect();
    const result = await runMigrations(connection, quiet);
    expect(result.applied.map((r) => r._id)).toEqual(MIGRATIONS.map((m) => m.id));
    expect(result.applied[2]!.result).toEqual({ liveTokens: 0, lastExpiresAt: null });
    expect(await migrationStatus(connection)).toMatchObject({ pending: [], unknown: [] });
    expect((await runMigrations(connection, quiet)).applied).toEqual([]);
  });

  test('a migration that fails half-way stays pending (marked interrupted), frees the lock, and runs again from the start', async () => {
    const connection = await connect();
    let failNext = true;
    const [one, three] = counting(['001-one', '003-three']);
    const halfway: Migration = {
      id: '002-halfway',
      description: 'writes, then fails the first time',
      async up({ connection: c }) {
        // Written to be re-run: insert what is missing.
        await c.collection('items').updateOne({ _id: 'a' as never }, { $setOnInsert: { v: 1 } }, { upsert: true });
        if (failNext) {
          failNext = false;
          throw new Error('disk on fire');
        }
        await c.collection('items').updateOne({ _id: 'b' as never }, { $setOnInsert: { v: 2 } }, { upsert: true });
      },
    };
    const list = [one!, halfway, three!];
    await expect(runMigrations(connection, quiet, { list })).rejects.toThrow(/migration 002-halfway failed .*disk on fire/);
    const status = await migrationStatus(connection, list);
    expect(status.applied.map((r) => r._id)).toEqual(['001-one']);
    expect(status.pending).toEqual([
      { id: '002-halfway', description: halfway.description, interrupted: { startedAt: expect.any(Date), host: expect.any(String), pid: process.pid } },
      { id: '003-three', description: 'test 003-three' },
    ]);
    // The lock was let go: no waiting now.
    const second = await runMigrations(connection, quiet, { list, waitMs: 0 });
    expect(second.applied.map((r) => r._id)).toEqual(['002-halfway', '003-three']);
    expect(await connection.collection('items').countDocuments()).toBe(2);
    expect(await runsOf(connection)).toEqual({ '001-one': 1, '003-three': 1 });
  });
});

describe('the lock', () => {
  test('two runners started together on two connections run each migration once', async () => {
    const uri = testMongoUri('migrations');
    const [a, b] = [await connect(uri), await connect(uri)];
    const list = counting(['001-a', '002-b', '003-c'], 200);
    const results = await Promise.all([runMigrations(a, quiet, { list }), runMigrations(b, quiet, { list })]);
    expect(results.flatMap((r) => r.applied.map((m) => m._id)).sort()).toEqual(['001-a', '002-b', '003-c']);
    expect(await runsOf(a)).toEqual({ '001-a': 1, '002-b': 1, '003-c': 1 });
  });

  test('two `npm run migrate` processes at once: one applies everything, the other nothing; audited once', async () => {
    const uri = testMongoUri('migrations');
    const outputs = await Promise.all([migrateCli(uri, '--actor', 'ops-one'), migrateCli(uri, '--actor', 'ops-two')]);
    for (const output of outputs) expect(output).toMatchObject({ code: 0, stderr: '' });
    const parsed = outputs.map((o) => JSON.parse(o.stdout) as { applied: { _id: string }[]; alreadyApplied: string[] });
    const ids = MIGRATIONS.map((m) => m.id);
    const winner = parsed.findIndex((p) => p.applied.length > 0);
    expect(parsed[winner]!.applied.map((m) => m._id)).toEqual(ids);
    expect(parsed[1 - winner]).toEqual({ applied: [], alreadyApplied: ids });

    const status = await migrateCli(uri, 'status');
    expect(JSON.parse(status.stdout)).toMatchObject({ pending: [], unknown: [] });
    expect(JSON.parse(status.stdout).applied.map((r: { _id: string }) => r._id)).toEqual(ids);
    const connection = await connect(uri);
    const events = await connection.collection('audit_events').find({ action: 'migrations.apply' }).toArray();
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ actor: { sub: `operator:${winner === 0 ? 'ops-one' : 'ops-two'}` }, details: { migrations: ids.join(','), count: ids.length } });
  });

  test('a stale lock (its runner stopped renewing it) is taken over, with a warning', async () => {
    const connection = await connect();
    const locks = connection.collection<LockDocument>(LOCK_COLLECTION);
    await locks.insertOne({ _id: 7, owner: 'crashed', host: 'old-host', pid: 4242, acquiredAt: new Date(Date.now() - 600_000), until: new Date(Date.now() - 1000) });
    const { lines, logger } = capturingLogger();
    const result = await runMigrations(connection, logger, { list: counting(['001-a']), waitMs: 0 });
    expect(result.applied.map((r) => r._id)).toEqual(['001-a']);
    expect(lines.find((l) => l.msg === 'took over a stale migration lock (its runner stopped renewing it)')).toMatchObject({ host: 'old-host', pid: 4242 });
    // The taker's generation follows the stale one, and is released.
    expect(await locks.find({}).toArray()).toEqual([expect.objectContaining({ _id: 8, released: expect.any(Date) })]);
  });

  test('a live lock is refused with a clear message, or waited for until it is released', async () => {
    const uri = testMongoUri('migrations');
    const connection = await connect(uri);
    const locks = connection.collection<LockDocument>(LOCK_COLLECTION);
    await locks.insertOne({ _id: 1, owner: 'busy', host: 'other-host', pid: 999, acquiredAt: new Date(), until: new Date(Date.now() + 60_000) });
    const list = counting(['001-a']);

    const refused = runMigrations(connection, quiet, { list, waitMs: 0 });
    await expect(refused).rejects.toBeInstanceOf(MigrationLockBusyError);
    await expect(refused).rejects.toThrow(/another migration runner holds the lock \(host other-host, pid 999, renewed until .*\); try again once it has finished/);
    const cli = await migrateCli(uri, '--wait', '0');
    expect(cli.code).toBe(75);
    expect(cli.stderr).toMatch(/^error: another migration runner holds the lock \(host other-host, pid 999/);
    expect(await runsOf(connection)).toEqual({});

    const { lines, logger } = capturingLogger();
    const waiting = runMigrations(connection, logger, { list, waitMs: 60_000 });
    for (let i = 0; i < 600 && !lines.some((l) => l.msg === 'waiting for another migration runner to finish'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await runsOf(connection)).toEqual({});
    await locks.updateOne({ _id: 1 }, { $set: { released: new Date() } });
    expect((await waiting).applied.map((r) => r._id)).toEqual(['001-a']);
  });

  test('a runner that finds its lock taken over starts no further migration', async () => {
    const connection = await connect();
    const locks = connection.collection<LockDocument>(LOCK_COLLECTION);
    const first: Migration = {
      id: '001-long', description: 'outlives its lock',
      async up() {
        const mine = (await locks.find({}).sort({ _id: -1 }).limit(1).next())!;
        // Another runner takes over, as after this one stopped renewing for a whole lifetime.
        await locks.insertOne({ ...mine, _id: mine._id + 1, owner: 'successor' });
        // Longer than the lock's lifetime: either a renewal sees the successor, or none succeeds in time.
        await new Promise((resolve) => setTimeout(resolve, 500));
      },
    };
    const list = [first, ...counting(['002-next'])];
    await expect(runMigrations(connection, quiet, { list, lockTtlMs: 200 })).rejects.toThrow(/migration lock was lost/);
    expect(await runsOf(connection)).toEqual({});
    expect((await migrationStatus(connection, list)).applied.map((r) => r._id)).toEqual(['001-long']);
  });
});

/** A full production environment (test/config.test.ts PRODUCTION) against the test services. */
const production = (uri: string): Record<string, string> => ({
  NODE_ENV: 'production', ISSUER: 'https://id.example.com', TRUST_PROXY: 'true', MONGODB_URI: uri, REDIS_URL: testRedisUrl(),
  SMTP_URL: 'smtp://127.0.0.1:9', COOKIE_KEYS: `${'k'.repeat(32)},${'o'.repeat(40)}`, SECRETS_KEY: `k1:${Buffer.alloc(32, 7).toString('base64')}`,
});

describe('production start', () => {
  test('refused while a migration is pending, with a message naming `npm run migrate`; it starts once that has run', async () => {
    const uri = testMongoUri('migrations');
    const connection = await connect(uri);
    await runMigrations(connection, quiet);
    const last = MIGRATIONS.at(-1)!.id;
    await connection.collection(RECORDS_COLLECTION).deleteOne({ _id: last as never });
    const env = production(uri);
    const keys = await run(process.execPath, ['scripts/keys.ts', 'generate'], { cwd: projectRoot(), env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env } });
    expect(JSON.parse(keys.stdout)).toMatchObject({ created: true });

    const refused = await serverProcessExit({ env });
    expect(refused.code).toBe(1);
    const fatal = refused.output.map((line) => { try { return JSON.parse(line) as { msg?: string; err?: { message?: string } }; } catch { return {}; } })
      .find((line) => line.msg === 'start-up failed');
    expect(fatal?.err?.message).toBe(`the database has 1 pending migration (${last}): run \`npm run migrate\` with this version before starting it in production`);
    // Nothing was started on the way: no index was built (the collections of indexes' owners do not exist).
    expect(await connection.db!.listCollections({ name: 'oidc_session' }).toArray()).toEqual([]);

    expect((await migrateCli(uri)).code).toBe(0);
    const server = await startServerProcess({ env });
    try {
      expect((await fetch(`${server.url}/healthz/live`)).status).toBe(200);
    } finally {
      await server.stop();
    }
  });
});

describe('001-legacy-pointers', () => {
  test('carries pointers written by earlier versions over; the adapter then finds sessions, device codes and grants without oidc_lookup', async () => {
    const connection = await connect();
    const ferretdb = await isFerretDb(connection);
    const expiresAt = new Date(Date.now() + 600_000);
    const session = (id: string, uid: string) => ({ _id: id, payload: { jti: id, kind: 'Session', uid, accountId: 'acc' }, expiresAt });
    // As those versions wrote them: the artifact, then `<Model>:<key>` -> id in oidc_lookup.
    await connection.collection('oidc_session').insertMany([session('old-session', 'old-uid')] as never[]);
    await connection.collection('oidc_devicecode').insertOne({ _id: 'old-device', payload: { jti: 'old-device', kind: 'DeviceCode', userCode: 'WDJB-MJHT', clientId: 'tv' }, expiresAt } as never);
    await connection.collection('oidc_grant').insertOne({ _id: 'old-grant', payload: { jti: 'old-grant', kind: 'Grant', accountId: 'acc', clientId: 'app' }, expiresAt } as never);
    const pointers = [
      { _id: 'Session:old-uid', id: 'old-session', expiresAt },
      { _id: 'DeviceCode:WDJB-MJHT', id: 'old-device', expiresAt },
      { _id: 'Grant:["acc","app"]', id: 'old-grant', expiresAt },
      { _id: 'Session:expired-uid', id: 'expired-session', expiresAt: new Date(Date.now() - 1000) },
      { _id: 'Session:vanished-uid', id: 'vanished-session', expiresAt },
    ];
    if (ferretdb) {
      // A session re-keyed by the current version since: its copy is newer than the old pointer.
      await connection.collection('oidc_session').insertMany([session('older-session', 'shared-uid'), session('new-session', 'shared-uid'),
        { ...session('new-session', 'shared-uid'), _id: 'uid:shared-uid', of: 'new-session' }] as never[]);
      pointers.push({ _id: 'Session:shared-uid', id: 'older-session', expiresAt });
    }
    await connection.collection('oidc_lookup').insertMany(pointers as never[]);
    const before = new ArtifactStore(connection);
    await before.ensureIndexes();
    // The adapter reads no pointers: on FerretDB the migration is what makes the session findable.
    const unmigrated = await before.adapterFor('Session').findByUid('old-uid');
    if (ferretdb) expect(unmigrated).toBeUndefined();
    else expect(unmigrated).toMatchObject({ jti: 'old-session' });

    const { applied } = await runMigrations(connection, quiet, { list: [legacyPointers] });
    const none = { converted: 0, kept: 0, expired: 0, stale: 0, unknown: 0 };
    expect(applied[0]!.result).toEqual(ferretdb
      ? { layout: 'copies', converted: 3, kept: 1, expired: 1, stale: 1, unknown: 0, dropped: true }
      : { layout: 'indexes', ...none, dropped: true });
    expect(await connection.db!.listCollections({ name: 'oidc_lookup' }).toArray()).toEqual([]);

    const after = new ArtifactStore(connection);
    await after.ensureIndexes();
    const expectFound = async () => {
      expect(await after.adapterFor('Session').findByUid('old-uid')).toMatchObject({ jti: 'old-session', accountId: 'acc' });
      expect(await after.adapterFor('DeviceCode').findByUserCode('WDJB-MJHT')).toMatchObject({ jti: 'old-device', clientId: 'tv' });
      expect(await after.grantIdFor('acc', 'app')).toBe('old-grant');
      expect(await after.adapterFor('Session').findByUid('vanished-uid')).toBeUndefined();
      if (ferretdb) expect(await after.adapterFor('Session').findByUid('shared-uid')).toMatchObject({ jti: 'new-session' });
    };
    await expectFound();

    // Crashed before the drop and run again: the copies are there already and are kept.
    await connection.collection('oidc_lookup').insertMany(pointers as never[]);
    const rerun = await legacyPointers.up({ connection, logger: quiet });
    expect(rerun).toEqual(ferretdb ? { layout: 'copies', ...none, kept: 4, expired: 1, stale: 1, dropped: true } : { layout: 'indexes', ...none, dropped: true });
    await expectFound();

    // The copies are the adapter's own: signing out ends the session and its copy.
    await after.adapterFor('Session').destroy('old-session');
    expect(await after.adapterFor('Session').findByUid('old-uid')).toBeUndefined();
    expect(await connection.collection('oidc_session').findOne({ _id: 'uid:old-uid' as never })).toBeNull();
  });
});
