/** The shape of a data migration and of its record (see runner.ts for the rules they follow). */
import type { Connection } from 'mongoose';
import type { Logger } from '../observability/logger.ts';

export interface MigrationContext {
  /** The database, as every other part of the provider reaches it. */
  readonly connection: Connection;
  /** Tagged with the migration's id. */
  readonly logger: Logger;
}

/** What a migration reports having done (counts, dates as ISO text); kept in its record. */
export type MigrationResult = Record<string, string | number | boolean | null>;

export interface Migration {
  /** `NNN-what-it-does`: its file's name without `.ts`. Migrations run in the order of their ids. */
  readonly id: string;
  readonly description: string;
  /** Must be safe to run again from the start after a crash half-way (see runner.ts). */
  up(context: MigrationContext): Promise<MigrationResult | void>;
}

/** One document of the `migrations` collection. */
export interface MigrationRecord {
  _id: string;
  description: string;
  startedAt: Date;
  /** Absent while it runs, and after a run that failed or crashed: it is then still pending. */
  finishedAt?: Date;
  durationMs?: number;
  host: string;
  pid: number;
  result?: MigrationResult;
}
