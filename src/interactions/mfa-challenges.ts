/**
 * The second step of a sign-in: after the password of an account with two-step verification,
 * the interaction waits here (keyed by its uid) until a code is given, or, when the application
 * requires a second factor the account does not have yet, until it is set up. Nothing is granted
 * to the browser in between; the record only says which account the password proved.
 */
import type { Collection, Connection } from 'mongoose';

/** 'verify': a code of the account's factor is due; 'enrol': the factor is being set up. */
export type ChallengePurpose = 'verify' | 'enrol';

interface Challenge {
  /** The interaction uid. */
  _id: string;
  accountId: string;
  /** Absent on records written before enrolment in a sign-in existed: 'verify'. */
  purpose?: ChallengePurpose;
  expiresAt: Date;
}

export interface PendingChallenge {
  accountId: string;
  purpose: ChallengePurpose;
}

export class MfaChallenges {
  private readonly challenges: Collection<Challenge>;

  constructor(connection: Connection) {
    this.challenges = connection.collection<Challenge>('mfa_challenges');
  }

  async ensureIndexes(): Promise<void> {
    await this.challenges.createIndex({ expiresAt: 1 });
  }

  async start(uid: string, accountId: string, ttlSeconds: number, purpose: ChallengePurpose = 'verify'): Promise<void> {
    const challenge = { accountId, purpose, expiresAt: new Date(Date.now() + ttlSeconds * 1000) };
    await this.challenges.replaceOne({ _id: uid }, challenge, { upsert: true });
  }

  /** The account waiting for its second step in this interaction, if any. */
  async pending(uid: string): Promise<PendingChallenge | undefined> {
    const challenge = await this.challenges.findOne({ _id: uid });
    if (!challenge || challenge.expiresAt.getTime() <= Date.now()) return undefined;
    return { accountId: challenge.accountId, purpose: challenge.purpose ?? 'verify' };
  }

  async end(uid: string): Promise<void> {
    await this.challenges.deleteOne({ _id: uid });
  }

  async sweep(): Promise<void> {
    await this.challenges.deleteMany({ expiresAt: { $lt: new Date() } });
  }
}
