/**
 * A lease on one named task, held by one process at a time across instances: a unique `_id`
 * insert into `locks` (atomic on FerretDB too, where findAndModify is not). A lease not released
 * lapses at `until`; a lapsed one is taken over by deleting exactly that document and inserting
 * again, so of two processes taking it over only one insert can win.
 */
import { randomUUID } from 'node:crypto';
import type { Collection, Connection } from 'mongoose';

interface LeaseDocument { _id: string; owner: string; until: Date }

export class Lease {
  private readonly locks: Collection<LeaseDocument>;
  private readonly name: string;
  private readonly ttlMs: number;

  constructor(connection: Connection, name: string, ttlMs: number) {
    this.locks = connection.collection<LeaseDocument>('locks');
    this.name = name;
    this.ttlMs = ttlMs;
  }

  /** Runs `task` holding the lease; undefined (and `task` not run) when another process holds it. */
  async run<T>(task: () => Promise<T>, now = new Date()): Promise<{ value: T } | undefined> {
    const owner = randomUUID();
    if (!(await this.take(owner, now))) return undefined;
    try {
      return { value: await task() };
    } finally {
      await this.locks.deleteOne({ _id: this.name, owner }).catch(() => undefined);
    }
  }

  private async take(owner: string, now: Date): Promise<boolean> {
    const insert = () => this.locks.insertOne({ _id: this.name, owner, until: new Date(now.getTime() + this.ttlMs) }).then(() => true, (error: { code?: unknown }) => {
      if (error.code === 11000) return false;
      throw error;
    });
    if (await insert()) return true;
    const lapsed = await this.locks.deleteOne({ _id: this.name, until: { $lt: now } });
    return lapsed.deletedCount === 1 && insert();
  }
}
