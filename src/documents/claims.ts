/**
 * Per-version claims: before a writer produces version n+1 of a document it inserts
 * `{_id: "<id>:<n+1>"}` into document_version_claims. A unique-key insert is atomic on MongoDB
 * and on FerretDB v1, whose conditional updates are a read then a write, so only one writer at a
 * time may touch a document, whether it changes the version (a command) or not (the audit outbox
 * clearing events it has written).
 */
import type { Collection, Connection } from 'mongoose';
import type { DocumentRecord, VersionClaim } from './model.ts';

/** A claim this old was left by a writer that died between claiming and committing. */
const STALE_CLAIM_MS = 30_000;

export function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 11000;
}

export class VersionClaims {
  private readonly claims: Collection<VersionClaim>;

  constructor(connection: Connection) {
    this.claims = connection.collection<VersionClaim>('document_version_claims');
  }

  /**
   * Runs `write` holding the claim on `doc`'s next version; undefined when another writer holds
   * it. With `releaseStale` (the default) a claim left by a dead writer is then released; writers
   * retrying in a crowd ask only now and then, to spare the database a read per collision.
   */
  async claimed<T>(
    doc: Pick<DocumentRecord, '_id' | 'version'>, write: () => Promise<T | undefined>, { releaseStale = true } = {},
  ): Promise<T | undefined> {
    const claim = { _id: `${doc._id}:${doc.version + 1}`, at: new Date() };
    try {
      await this.claims.insertOne(claim);
    } catch (error) {
      if (!isDuplicateKey(error)) throw error;
      if (releaseStale) await this.releaseIfStale(claim._id);
      return undefined;
    }
    try {
      return await write();
    } finally {
      // Once the write is done, later writers see the new version and no longer need the claim.
      // Matched on `at` too, so a claim taken over as stale is left to its new holder. A failure
      // here must not undo a write that happened: the claim goes stale and is taken over.
      await this.claims.deleteOne(claim).catch(() => undefined);
    }
  }

  private async releaseIfStale(claimId: string): Promise<void> {
    const claim = await this.claims.findOne({ _id: claimId });
    if (claim && Date.now() - claim.at.getTime() > STALE_CLAIM_MS) await this.claims.deleteOne({ _id: claimId, at: claim.at });
  }
}
