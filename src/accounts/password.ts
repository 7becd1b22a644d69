import os from 'node:os';
import argon2 from 'argon2';
import { ServiceUnavailableError } from '../http/unavailable.ts';
import type { Config } from '../config.ts';

export const PASSWORD_MAX_LENGTH = 128;

/**
 * Hashes computed at once: one per core. More would not finish sooner (argon2 is CPU-bound), but
 * each holds its memory cost (19 MiB by default) while it waits for a core.
 */
const AT_ONCE = Math.max(1, os.availableParallelism());
/**
 * A hash that has waited this long for a core is given up (503, try again): its request is
 * answered or nearly so by then, and hashing for it would only delay the ones behind.
 */
const MAX_WAIT_MS = 5000;

/** argon2id hashing with the configured (OWASP minimum or stronger) cost. */
export class PasswordHasher {
  private readonly options: argon2.HashOptions;
  /** A real hash of a random value, verified against when the account does not exist so that
   *  unknown emails cost the same time as wrong passwords. */
  private dummyHash: Promise<string>;
  private running = 0;
  private readonly waiting: { go: () => void; giveUp: (error: Error) => void; since: number }[] = [];

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
    } catch (error) {
      // Busy is not a wrong password: it must not count as a failed sign-in.
      if (error instanceof ServiceUnavailableError) throw error;
      return false;
    }
  }

  /**
   * Verifies an imported hash (imported-hashes.ts) with `check`, alongside the same argon2id work
   * as a wrong password, so a failure takes at least as long as one for any other account or an
   * unknown email. (A hash slower than argon2id, such as bcrypt cost 12, takes longer still, which
   * tells only that an imported account has not signed in yet; its first sign-in ends that.)
   */
  async verifyImported(check: () => Promise<boolean>, password: string): Promise<boolean> {
    const [valid] = await Promise.all([
      this.oneOfFew(check).catch((error: unknown) => {
        if (error instanceof ServiceUnavailableError) throw error;
        return false;
      }),
      this.verify(undefined, password),
    ]);
    return valid;
  }

  /** Runs `work` when fewer than AT_ONCE hashes are running; a finished one hands its slot on. */
  private async oneOfFew<T>(work: () => Promise<T>): Promise<T> {
    if (this.running < AT_ONCE) this.running += 1;
    else await new Promise<void>((go, giveUp) => this.waiting.push({ go, giveUp, since: Date.now() }));
    try {
      return await work();
    } finally {
      this.handOn();
    }
  }

  private handOn(): void {
    for (let next = this.waiting.shift(); next; next = this.waiting.shift()) {
      if (Date.now() - next.since <= MAX_WAIT_MS) return next.go();
      next.giveUp(new ServiceUnavailableError('too many sign-ins at once', 1));
    }
    this.running -= 1;
  }

  /**
   * True when a stored hash was made with other parameters than today's and should be redone
   * (argon2's own check compares the parameters only, not the variant).
   */
  needsRehash(hash: string): boolean {
    return !hash.startsWith('$argon2id$') || argon2.needsRehash(hash, this.options);
  }
}
