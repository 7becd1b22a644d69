import os from 'node:os';
import argon2 from 'argon2';
import type { Config } from '../config.ts';

export const PASSWORD_MAX_LENGTH = 128;

/**
 * Hashes computed at once: one per core. More would not finish sooner (argon2 is CPU-bound), but
 * each holds its memory cost (19 MiB by default) while it waits for a core.
 */
const AT_ONCE = Math.max(1, os.availableParallelism());

/** argon2id hashing with the configured (OWASP minimum or stronger) cost. */
export class PasswordHasher {
  private readonly options: argon2.HashOptions;
  /** A real hash of a random value, verified against when the account does not exist so that
   *  unknown emails cost the same time as wrong passwords. */
  private dummyHash: Promise<string>;
  private running = 0;
  private readonly waiting: (() => void)[] = [];

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
    return this.oneOfFew(() => argon2.hash(password, this.options));
  }

  async verify(hash: string | undefined, password: string): Promise<boolean> {
    try {
      const stored = hash ?? (await this.dummyHash);
      return await this.oneOfFew(() => argon2.verify(stored, password));
    } catch {
      return false;
    }
  }

  /** Runs `work` when fewer than AT_ONCE hashes are running; a finished one hands its slot on. */
  private async oneOfFew<T>(work: () => Promise<T>): Promise<T> {
    if (this.running < AT_ONCE) this.running += 1;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running -= 1;
    }
  }

  /** True when a stored hash was made with weaker parameters than today's and should be redone. */
  needsRehash(hash: string): boolean {
    return argon2.needsRehash(hash, this.options);
  }
}
