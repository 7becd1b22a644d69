/**
 * Revocation of self-contained (JWT) access tokens. Opaque artifacts die when their documents are
 * deleted, but a JWT for the documents API is checked without asking the provider, so revoking an
 * account ("sign out everywhere", disable, password or role change) or a client (delete, secret
 * rotation) also records "nothing issued to it before now is valid". Each instance keeps the
 * records of the last access-token lifetime in memory and re-reads them every few seconds, so a
 * revocation made anywhere (another instance, the CLI) takes effect within that interval, and
 * checking a token costs three map lookups. Removing an app's access on the account page revokes
 * what that app holds for that account ("grant": the pair of both).
 */
import type { Collection, Connection } from 'mongoose';
import type { Logger } from '../observability/logger.ts';

interface RevocationRecord {
  /** "account:<id>", "client:<id>" or "grant:<account id> <client id>". */
  _id: string;
  /** Tokens issued at or before this instant are revoked. */
  notAfter: Date;
  /** When no token it could affect is still valid. */
  expiresAt: Date;
}

export type RevocationSubject = 'account' | 'client' | 'grant';

/** The id of a "grant" revocation: what one account gave one client. */
export const grantSubject = (accountId: string, clientId: string) => `${accountId} ${clientId}`;

const RETENTION_MARGIN_MS = 10 * 60_000;

export class TokenRevocations {
  private readonly records: Collection<RevocationRecord>;
  private readonly lifetimeMs: number;
  private readonly logger: Logger;
  private snapshot = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;

  /** lifetimeSeconds: the longest an access token lives (records older than that are moot). */
  constructor(connection: Connection, lifetimeSeconds: number, logger: Logger) {
    this.records = connection.collection<RevocationRecord>('token_revocations');
    this.lifetimeMs = lifetimeSeconds * 1000;
    this.logger = logger;
  }

  async ensureIndexes(): Promise<void> {
    await this.records.createIndex({ expiresAt: 1 });
  }

  async revoke(subject: RevocationSubject, id: string): Promise<void> {
    const now = new Date();
    const key = `${subject}:${id}`;
    // Kept a little beyond the longest token life: verification allows clock skew, and other
    // instances read the records only every few seconds.
    const record = { notAfter: now, expiresAt: new Date(now.getTime() + this.lifetimeMs + RETENTION_MARGIN_MS) };
    await this.records.updateOne({ _id: key }, { $set: record }, { upsert: true });
    this.snapshot.set(key, now.getTime());
  }

  /**
   * True when the token (issued at `iat`, seconds) belongs to a revoked account, client or the pair. Token
   * times have one-second resolution, so a token issued in the same second as the revocation is
   * refused too: the safe side of the ambiguity.
   */
  isRevoked(accountId: string | undefined, clientId: string, iat: number): boolean {
    const issuedAt = iat * 1000;
    const revokedAt = [
      this.snapshot.get(`client:${clientId}`),
      ...(accountId === undefined ? [] : [this.snapshot.get(`account:${accountId}`), this.snapshot.get(`grant:${grantSubject(accountId, clientId)}`)]),
    ];
    return revokedAt.some((at) => at !== undefined && issuedAt <= at);
  }

  /** Re-reads the live records (and drops expired ones, which matter to no token any more). */
  async refresh(): Promise<void> {
    const started = Date.now();
    await this.records.deleteMany({ expiresAt: { $lt: new Date(started) } });
    const live = await this.records.find({}).toArray();
    const next = new Map(live.map((record) => [record._id, record.notAfter.getTime()]));
    // Keep what this instance revoked while the read was in flight.
    for (const [key, at] of this.snapshot) if (at >= started && (next.get(key) ?? 0) < at) next.set(key, at);
    this.snapshot = next;
  }

  /** Loads the records now, then every intervalSeconds; returns a stop function. */
  async start(intervalSeconds: number): Promise<() => void> {
    await this.refresh();
    this.timer = setInterval(() => {
      this.refresh().catch((error: unknown) => this.logger.error({ err: error }, 'reading token revocations failed'));
    }, intervalSeconds * 1000);
    this.timer.unref();
    return () => clearInterval(this.timer);
  }
}
