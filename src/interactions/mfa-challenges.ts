/**
 * The second step of a sign-in: after the password of an account with two-step verification,
 * the interaction waits here (keyed by its uid) until a code is given. Nothing is granted to the
 * browser in between; the record only says which account the password proved.
 */
import type { Collection, Connection } from 'mongoose';

interface Challenge {
  /** The interaction uid. */
  _id: string;
  accountId: string;
  expiresAt: Date;
}

export class MfaChallenges {
  private readonly challenges: Collection<Challenge>;

  constructor(connection: Connection) {
    this.challenges = connection.collection<Challenge>('mfa_challenges');
  }

  async ensureIndexes(): Promise<void> {
    await this.challenges.createIndex({ expiresAt: 1 });
  }

  async start(uid: string, accountId: string, ttlSeconds: number): Promise<void> {
    const challenge = { accountId, expiresAt: new Date(Date.now() + ttlSeconds * 1000) };
    await this.challenges.replaceOne({ _id: uid }, challenge, { upsert: true });
  }

  /** The account waiting for a code in this interaction, if any. */
  async pending(uid: string): Promise<string | undefined> {
    const challenge = await this.challenges.findOne({ _id: uid });
    return challenge && challenge.expiresAt.getTime() > Date.now() ? challenge.accountId : undefined;
  }

  async end(uid: string): Promise<void> {
    await this.challenges.deleteOne({ _id: uid });
  }

  async sweep(): Promise<void> {
    await this.challenges.deleteMany({ expiresAt: { $lt: new Date() } });
  }
}
