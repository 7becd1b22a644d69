/**
 * Versioned data migrations: the ordered list of list.ts, applied once per database and recorded
 * in the `migrations` collection (`{_id: id, description, startedAt, finishedAt, durationMs, host,
 * pid, result}`), one runner at a time (lock.ts).
 *
 * When they run: `npm run migrate` (scripts/migrate.ts) applies the pending ones; a development
 * or test server applies them itself at start, before it builds indexes or reads anything else;
 * a production server refuses to start while any is pending (PendingMigrationsError), so that an
 * upgrade is a deliberate step and several instances never race to do it. An empty database is
 * no exception: its migrations run too (they find nothing to do, in a few milliseconds), so a
 * first production start also needs `npm run migrate`.
 *
 * Rules for writing one (a file `NNN-what-it-does.ts` exporting a Migration, appended to list.ts):
 * - Safe to run again. A runner that crashes half-way leaves the migration unrecorded (its record
 *   has no finishedAt) and the next run starts it from the beginning, over whatever the first run
 *   already changed. So each step checks before it writes (insert what is missing, skip what is
 *   there, delete last), and nothing is dropped until what it held has been carried over. (A
 *   runner cut off from the database for longer than a lock lasts can even overlap the runner
 *   that takes over from it: lock.ts.)
 * - Correct on FerretDB v1 and on MongoDB >= 6: no transactions, no atomic findAndModify on
 *   FerretDB (a unique-`_id` insert is the one atomic decision), and only `_id` equality is
 *   answered from an index there: a filter on anything else reads the whole collection.
 * - Safe beside running instances of the version before it (production migrates while the old
 *   version still serves): a migration may add what the old version ignores, and may remove only
 *   what the new version no longer reads and the old one can do without. Where that cannot
 *   hold, the README's upgrade notes say to stop the old instances before `npm run migrate`.
 * - Never changes an applied migration: a change is a new migration. Never logs a secret.
 * - Bounded: streams a collection in batches, never holds it whole in memory.
 */
import { hostname } from 'node:os';
import type { Collection, Connection } from 'mongoose';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import { MIGRATIONS } from './list.ts';
import { LOCK_TTL_MS, MigrationLock } from './lock.ts';
import type { Migration, MigrationRecord } from './types.ts';

export const RECORDS_COLLECTION = 'migrations';
const ID = /^\d{3}-[a-z0-9]+(?:-[a-z0-9]+)*$/;

/** Refuses a list whose ids are malformed, repeated or out of order (a mistake in list.ts). */
export function checkList(list: readonly Migration[]): void {
  list.forEach((migration, index) => {
    if (!ID.test(migration.id)) throw new Error(`migration id "${migration.id}" is not NNN-name`);
    const previous = list[index - 1];
    if (previous && previous.id >= migration.id) throw new Error(`migration "${migration.id}" is listed after "${previous.id}"`);
  });
}

export interface MigrationStatus {
  applied: MigrationRecord[];
  /** Not applied yet, in the order they will run; `interrupted` when a run began and did not finish. */
  pending: { id: string; description: string; interrupted?: { startedAt: Date; host: string; pid: number } }[];
  /** Recorded as applied but unknown to this version (applied by a newer one). */
  unknown: MigrationRecord[];
}

const records = (connection: Connection): Collection<MigrationRecord> => connection.collection<MigrationRecord>(RECORDS_COLLECTION);

export async function migrationStatus(connection: Connection, list: readonly Migration[] = MIGRATIONS): Promise<MigrationStatus> {
  checkList(list);
  // A handful of documents: read whole, sorted here (FerretDB would sort them in memory anyway).
  const recorded = new Map((await records(connection).find({}).toArray()).map((record) => [record._id, record]));
  const known = new Set(list.map((migration) => migration.id));
  const finished = (record: MigrationRecord | undefined): record is MigrationRecord => record?.finishedAt !== undefined;
  return {
    applied: list.map((migration) => recorded.get(migration.id)).filter(finished),
    pending: list.filter((migration) => !finished(recorded.get(migration.id))).map(({ id, description }) => {
      const started = recorded.get(id);
      return { id, description, ...(started ? { interrupted: { startedAt: started.startedAt, host: started.host, pid: started.pid } } : {}) };
    }),
    unknown: [...recorded.values()].filter((record) => finished(record) && !known.has(record._id)).sort((a, b) => a._id.localeCompare(b._id)),
  };
}

export interface RunOptions {
  list?: readonly Migration[];
  /** How long to wait for another runner's lock before MigrationLockBusyError (default: a lock's lifetime and a half). */
  waitMs?: number;
  /** The lock's lifetime without renewal (tests shorten it). */
  lockTtlMs?: number;
}

export interface RunResult {
  /** Applied by this run, in order. */
  applied: MigrationRecord[];
  /** Applied before (by an earlier run, or by another runner while this one waited). */
  alreadyApplied: string[];
}

/** Applies the pending migrations in order, under the lock. A failure stops the run and is thrown. */
export async function runMigrations(connection: Connection, logger: Logger, options: RunOptions = {}): Promise<RunResult> {
  const list = options.list ?? MIGRATIONS;
  // Most starts find nothing to do: one read, no lock.
  if ((await migrationStatus(connection, list)).pending.length === 0) return { applied: [], alreadyApplied: list.map((m) => m.id) };
  const lock = await MigrationLock.acquire(connection, logger, { waitMs: options.waitMs ?? LOCK_TTL_MS * 1.5, ttlMs: options.lockTtlMs });
  const applied: MigrationRecord[] = [];
  try {
    // Read again under the lock: the runner it waited for may have applied them.
    const pending = new Set((await migrationStatus(connection, list)).pending.map((p) => p.id));
    for (const migration of list.filter((m) => pending.has(m.id))) {
      lock.assertHeld();
      const record: MigrationRecord = { _id: migration.id, description: migration.description, startedAt: new Date(), host: hostname(), pid: process.pid };
      await records(connection).replaceOne({ _id: migration.id }, record, { upsert: true });
      const log = logger.child({ migration: migration.id });
      log.info('applying migration');
      let result;
      try {
        result = await migration.up({ connection, logger: log });
      } catch (error) {
        throw new Error(`migration ${migration.id} failed (it runs again from the start next time): ${(error as Error).message}`, { cause: error });
      }
      const finishedAt = new Date();
      const done = { finishedAt, durationMs: finishedAt.getTime() - record.startedAt.getTime(), ...(result ? { result } : {}) };
      await records(connection).updateOne({ _id: migration.id }, { $set: done });
      log.info({ durationMs: done.durationMs, ...(result ? { result } : {}) }, 'migration applied');
      applied.push({ ...record, ...done });
    }
    return { applied, alreadyApplied: list.filter((m) => !pending.has(m.id)).map((m) => m.id) };
  } finally {
    await lock.release().catch((error: unknown) => logger.warn({ err: error }, 'releasing the migration lock failed; it goes stale in a minute'));
  }
}

/** A production start against a database that still needs `npm run migrate`. */
export class PendingMigrationsError extends Error {
  constructor(pending: readonly string[]) {
    super(`the database has ${pending.length} pending migration${pending.length === 1 ? '' : 's'} (${pending.join(', ')}): `
      + 'run `npm run migrate` with this version before starting it in production');
    this.name = 'PendingMigrationsError';
  }
}

/**
 * What a server does at start, before anything else touches the data: apply the pending
 * migrations (development, test), or refuse to start while any is pending (production).
 */
export async function migrateAtStart(connection: Connection, config: Pick<Config, 'isProduction'>, logger: Logger, list: readonly Migration[] = MIGRATIONS): Promise<void> {
  const { pending, unknown } = await migrationStatus(connection, list);
  if (unknown.length > 0) {
    logger.warn({ migrations: unknown.map((m) => m._id) }, 'the database has migrations this version does not know: a newer version applied them, and this one may not read all its data');
  }
  if (pending.length === 0) return;
  if (config.isProduction) throw new PendingMigrationsError(pending.map((p) => p.id));
  const { applied } = await runMigrations(connection, logger, { list });
  if (applied.length > 0) logger.info({ migrations: applied.map((m) => m._id) }, 'database migrations applied');
}
