/**
 * `npm run migrate`: applies the pending data migrations (src/migrations/) in order, once per
 * database, under the lock every runner shares, and prints what it applied as JSON (progress goes
 * to stderr). `npm run -s migrate -- status` lists applied, pending and unknown ones.
 * Opens only the database connection, like scripts/keys.ts: a production server refuses to start
 * while migrations are pending, so this must work without one.
 */
import mongoose from 'mongoose';
import { AuditLog } from '../src/audit/log.ts';
import { loadConfig } from '../src/config.ts';
import { ensureDevMongo } from '../src/local/services.ts';
import { MigrationLockBusyError } from '../src/migrations/lock.ts';
import { migrationStatus, runMigrations } from '../src/migrations/runner.ts';
import { createLogger } from '../src/observability/logger.ts';
import { parse, print, recordChange, runCli, UsageError } from './cli.ts';

const USAGE = `usage: npm run -s migrate -- [up] [--wait SECONDS] [--actor NAME]
       npm run -s migrate -- status
  up       apply the pending migrations (the default); waits up to --wait seconds (90) for
           another runner holding the lock, then gives up with exit code 75
  status   applied, pending (and interrupted) and unknown migrations, as JSON`;

const EX_TEMPFAIL = 75;

await runCli(USAGE, async (argv, _open, operator) => {
  const { values, positionals } = parse(argv, { wait: { type: 'string' } });
  const [command = 'up', ...rest] = positionals;
  if (command !== 'up' && command !== 'status') throw new UsageError(`unknown command "${command}"`);
  if (rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
  if (values.wait !== undefined && command !== 'up') throw new UsageError('--wait goes with up');
  const waitSeconds = values.wait === undefined ? 90 : Number(values.wait);
  if (!Number.isInteger(waitSeconds) || waitSeconds < 0 || waitSeconds > 3600) throw new UsageError('--wait expects whole seconds from 0 to 3600');

  const config = loadConfig(process.env);
  // Progress of a long migration is worth seeing; stdout keeps the one JSON answer.
  const logger = createLogger(config.logLevel, 2);
  const uri = config.mongodbUri ?? (await ensureDevMongo(config.dataDir, (m) => logger.info(m)));
  const connection = await mongoose.createConnection(uri, { serverSelectionTimeoutMS: 5000 }).asPromise();
  try {
    if (command === 'status') {
      print(await migrationStatus(connection));
      return;
    }
    let result;
    try {
      result = await runMigrations(connection, logger, { waitMs: waitSeconds * 1000 });
    } catch (error) {
      if (!(error instanceof MigrationLockBusyError)) throw error;
      process.stderr.write(`error: ${error.message}\n`);
      process.exitCode = EX_TEMPFAIL;
      return;
    }
    if (result.applied.length > 0) {
      await recordChange({ audit: new AuditLog(connection, logger) }, operator, 'migrations.apply', null, {
        migrations: result.applied.map((m) => m._id).join(','), count: result.applied.length,
      });
    }
    print(result);
  } finally {
    await connection.close();
  }
});
