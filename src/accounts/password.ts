import argon2 from 'argon2';
import type { Config } from '../config.ts';

export const PASSWORD_MAX_LENGTH = 128;

/** argon2id hashing with the configured (OWASP minimum or stronger) cost. */
export class PasswordHasher {
  private readonly options: argon2.HashOptions;
  /** A real hash of a random value, verified against when the account does not exist so that
   *  unknown emails cost the same time as wrong passwords. */
  private dummyHash: Promise<string>;

  constructor(cost: Config['argon2']) {
    this.options = {
      type: argon2.argon2id,
      memoryCost: cost.memoryKiB,
      timeCost: cost.timeCost,
      parallelism: cost.parallelism,
    };
    this.dummyHash = this.hash(crypto.randomUUID());
  }

  hash(password: string): Promise<string> {
    return argon2.hash(password, this.options);
  }

  async verify(hash: string | undefined, password: string): Promise<boolean> {
    try {
      return await argon2.verify(hash ?? (await this.dummyHash), password);
    } catch {
      return false;
    }
  }

  /** True when a stored hash was made with weaker parameters than today's and should be redone. */
  needsRehash(hash: string): boolean {
    return argon2.needsRehash(hash, this.options);
  }
}
