/**
 * Single-use tokens sent by mail (email verification, password reset). The token itself is only
 * ever in the mail: the database keeps its SHA-256, so a database leak does not hand out working
 * links. A token is spent by inserting a marker under the same hash: a unique-key insert is atomic
 * on MongoDB and on FerretDB v1, so two clicks racing on one link cannot both succeed.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Collection, Connection } from 'mongoose';

/** register: a registration waiting for its address to be proven (no account exists yet). */
export type AccountTokenKind = 'register' | 'verify-email' | 'reset-password';

/** What a registration needs once its link is followed. The password is already hashed (argon2id). */
export interface PendingRegistration {
  name: string;
  passwordHash: string;
}

interface TokenRecord {
  /** SHA-256 of the token, base64url. */
  _id: string;
  kind: AccountTokenKind;
  /** Empty for a registration. */
  accountId: string;
  /** The address the link was sent to, which following it proves. */
  email: string;
  pending?: PendingRegistration;
  /** The sign-in (oidc-provider interaction uid) the user left to follow the link, to return to it. */
  interaction?: string;
  expiresAt: Date;
}

interface SpentRecord {
  _id: string;
  expiresAt: Date;
}

const hash = (token: string) => createHash('sha256').update(token).digest('base64url');
const TOKEN_FORMAT = /^[A-Za-z0-9_-]{43}$/;
/** The shape of an oidc-provider interaction uid (what the forms accept as `interaction`). */
export const INTERACTION_UID = /^[A-Za-z0-9_-]{1,64}$/;

export interface TokenSubject {
  kind: AccountTokenKind;
  accountId: string;
  email: string;
  pending?: PendingRegistration | undefined;
  interaction?: string | undefined;
}

export class AccountTokens {
  private readonly tokens: Collection<TokenRecord>;
  private readonly spent: Collection<SpentRecord>;

  constructor(connection: Connection) {
    this.tokens = connection.collection<TokenRecord>('account_tokens');
    this.spent = connection.collection<SpentRecord>('account_tokens_spent');
  }

  async ensureIndexes(): Promise<void> {
    await this.tokens.createIndex({ accountId: 1, kind: 1 });
    await this.tokens.createIndex({ expiresAt: 1 });
    await this.spent.createIndex({ expiresAt: 1 });
  }

  /** A new token (32 random bytes, base64url) for the mail; valid for ttlSeconds. */
  async issue(kind: AccountTokenKind, subject: Omit<TokenSubject, 'kind'>, ttlSeconds: number): Promise<string> {
    const token = randomBytes(32).toString('base64url');
    await this.tokens.insertOne({
      _id: hash(token), kind, accountId: subject.accountId, email: subject.email,
      ...(subject.pending ? { pending: subject.pending } : {}),
      ...(subject.interaction && INTERACTION_UID.test(subject.interaction) ? { interaction: subject.interaction } : {}),
      expiresAt: new Date(Date.now() + ttlSeconds * 1000),
    });
    return token;
  }

  /** Who a live, unspent token of one of these kinds belongs to, without spending it. */
  async peek(kinds: AccountTokenKind | AccountTokenKind[], token: string): Promise<TokenSubject | undefined> {
    if (!TOKEN_FORMAT.test(token)) return undefined;
    const id = hash(token);
    const [record, spent] = await Promise.all([this.tokens.findOne({ _id: id }), this.spent.findOne({ _id: id })]);
    if (!record || spent || ![kinds].flat().includes(record.kind) || record.expiresAt.getTime() <= Date.now()) return undefined;
    return { kind: record.kind, accountId: record.accountId, email: record.email, pending: record.pending, interaction: record.interaction };
  }

  /** Spends the token: its subject for the one caller that wins, undefined for everyone else. */
  async consume(kinds: AccountTokenKind | AccountTokenKind[], token: string): Promise<TokenSubject | undefined> {
    const subject = await this.peek(kinds, token);
    if (!subject) return undefined;
    const id = hash(token);
    try {
      await this.spent.insertOne({ _id: id, expiresAt: new Date(Date.now() + 2 * 86_400_000) });
    } catch (error) {
      if ((error as { code?: unknown }).code === 11000) return undefined;
      throw error;
    }
    await this.tokens.deleteOne({ _id: id });
    return subject;
  }

  /** Ends every outstanding token of a kind for an account (a newer link replaces older ones). */
  async revokeAll(kind: AccountTokenKind, accountId: string): Promise<void> {
    await this.tokens.deleteMany({ accountId, kind });
  }

  /** Removes expired records; FerretDB has no TTL indexes, and records are small and few. */
  async sweep(): Promise<void> {
    const now = new Date();
    await Promise.all([this.tokens.deleteMany({ expiresAt: { $lt: now } }), this.spent.deleteMany({ expiresAt: { $lt: now } })]);
  }
}
