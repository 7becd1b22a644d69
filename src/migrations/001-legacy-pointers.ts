/**
 * Carries the pointers of `oidc_lookup`, which versions before the adapter's copies wrote for
 * secondary keys, over to the current layout, then drops the collection: afterwards the adapter
 * has no reason to read it.
 *
 * - MongoDB: secondary keys are read through indexes, so there is nothing to carry over.
 * - FerretDB: each live pointer `{_id: "<Model>:<key>", id, expiresAt}` becomes the copy the
 *   adapter writes today: the artifact's own document stored again under `uid:<uid>` (Session),
 *   `userCode:<code>` (DeviceCode) or `for:[account,client]` (Grant), with `of: <artifact id>`.
 *
 * The layout is written out here rather than imported from the adapter: this migration must do
 * what it did when it was written, whatever the adapter becomes.
 *
 * Safe to run again: a copy is only inserted where none exists (one that exists was written by the
 * current layout and is at least as new as the pointer), and the collection is dropped last.
 * A running instance may destroy an artifact between its read here and the copy's insert, which
 * would leave a copy believed without its artifact: the artifact is read again after the insert
 * and the copy removed if it has gone, so such a copy lives for a moment at most.
 */
import type { Collection, Connection } from 'mongoose';
import { dropIfPresent, isFerretDb } from './helpers.ts';
import type { Migration } from './types.ts';

interface Pointer { _id: string; id: string; expiresAt?: Date }
interface Artifact { _id: string; payload: Record<string, unknown>; expiresAt?: Date; of?: string }

const POINTERS = 'oidc_lookup';

const live = (expiresAt: Date | undefined) => expiresAt === undefined || expiresAt.getTime() > Date.now();

/** The id of the copy the current layout keeps for this artifact, when the pointer's key is its key. */
function copyIdFor(model: string, key: string, payload: Record<string, unknown>): string | undefined {
  if (model === 'Session' && payload.uid === key) return `uid:${key}`;
  if (model === 'DeviceCode' && payload.userCode === key) return `userCode:${key}`;
  if (model === 'Grant' && typeof payload.accountId === 'string' && typeof payload.clientId === 'string') {
    const pair = JSON.stringify([payload.accountId, payload.clientId]);
    if (pair === key) return `for:${pair}`;
  }
  return undefined;
}

type Outcome = 'converted' | 'kept' | 'expired' | 'stale' | 'unknown';

async function convert(connection: Connection, pointer: Pointer): Promise<Outcome> {
  if (!live(pointer.expiresAt)) return 'expired';
  const separator = pointer._id.indexOf(':');
  const model = pointer._id.slice(0, separator);
  if (separator < 0 || !['Session', 'DeviceCode', 'Grant'].includes(model)) return 'unknown';
  const artifacts: Collection<Artifact> = connection.collection<Artifact>(`oidc_${model.toLowerCase()}`);
  const read = async () => {
    const doc = await artifacts.findOne({ _id: pointer.id });
    return doc && doc.payload && doc.of === undefined && live(doc.expiresAt) ? doc : null;
  };
  const artifact = await read();
  const copyId = artifact ? copyIdFor(model, pointer._id.slice(separator + 1), artifact.payload) : undefined;
  if (!artifact || !copyId) return 'stale';
  try {
    await artifacts.insertOne({ ...artifact, _id: copyId, of: artifact._id });
  } catch (error) {
    if ((error as { code?: unknown }).code === 11000) return 'kept';
    throw error;
  }
  if (!(await read())) {
    const copy = await artifacts.findOne({ _id: copyId });
    if (copy?.of === artifact._id) await artifacts.deleteOne({ _id: copyId });
    return 'stale';
  }
  return 'converted';
}

export const migration: Migration = {
  id: '001-legacy-pointers',
  description: 'Carry the oidc_lookup pointers of earlier versions over to the current layout (copies on FerretDB), then drop oidc_lookup',
  async up({ connection, logger }) {
    const counts: Record<Outcome, number> = { converted: 0, kept: 0, expired: 0, stale: 0, unknown: 0 };
    const ferretdb = await isFerretDb(connection);
    if (ferretdb) {
      const cursor = connection.collection<Pointer>(POINTERS).find({}, { batchSize: 100 });
      for await (const pointer of cursor) counts[await convert(connection, pointer)]++;
    }
    const dropped = await dropIfPresent(connection, POINTERS);
    if (counts.converted + counts.kept > 0) logger.info(counts, 'legacy pointers carried over');
    return { layout: ferretdb ? 'copies' : 'indexes', ...counts, dropped };
  },
};
