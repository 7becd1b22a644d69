/**
 * One lane per document: the writers of one document in this process take turns, first come
 * first served, instead of all racing for its next version and backing off at random (which
 * starves some of them and floods the database with failed claims). Only an optimisation: the
 * version claims keep writers correct across processes, so a writer that waited too long may go
 * ahead while the one before it still runs.
 */
export class Lanes {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `work` once the writers ahead of it in `key`'s lane are done, or after `maxWaitMs`. */
  async run<T>(key: string, maxWaitMs: number, work: () => Promise<T>): Promise<T> {
    const ahead = this.tails.get(key);
    let done!: () => void;
    const mine = new Promise<void>((resolve) => { done = resolve; });
    // Whoever comes next waits for the writers ahead of this one too, even if this one stops waiting.
    const tail = ahead ? ahead.then(() => mine) : mine;
    this.tails.set(key, tail);
    try {
      if (ahead) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([ahead, new Promise<void>((resolve) => { timer = setTimeout(resolve, maxWaitMs); })]);
        clearTimeout(timer);
      }
      return await work();
    } finally {
      done();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
