/**
 * Messages the database did not take (it did not answer in time, or refused while it is away),
 * kept in this process's memory and stored again, oldest first, until it does. A message the
 * database refuses for any other reason would be refused forever: it is dropped, with an error
 * log line, rather than holding up the ones behind it. Bounded: beyond MEMORY_LIMIT a message is
 * lost, with an error log line. Memory dies with the process, so this only bridges a database
 * outage while the process lives.
 */
import { isUnavailable } from '../http/unavailable.ts';
import type { Logger } from '../observability/logger.ts';

const MEMORY_LIMIT = 1000;
const RETRY_MS = 1000;

export interface BackloggedMail {
  readonly _id: string;
  readonly template: string;
  readonly messageId: string;
  readonly expiresAt: Date;
}

export interface BacklogHooks<T> {
  /**
   * Stores one message; resolves when the database has it (a duplicate key counts: it has it).
   * Rejects with an error `isUnavailable` knows when the database did not answer.
   */
  store(record: T): Promise<void>;
  /** A message whose links expired before the database took it. */
  expired(record: T): void;
  /** Some messages were stored: the worker can pick them up now. */
  stored(): void;
}

export class MemoryBacklog<T extends BackloggedMail> {
  private readonly records = new Map<string, T>();
  private readonly logger: Logger;
  private readonly hooks: BacklogHooks<T>;
  private timer: NodeJS.Timeout | undefined;

  constructor(logger: Logger, hooks: BacklogHooks<T>) {
    this.logger = logger;
    this.hooks = hooks;
  }

  keep(record: T, error: unknown): void {
    const { template, messageId } = record;
    if (this.records.size >= MEMORY_LIMIT) {
      this.logger.error({ template, messageId }, 'mail lost: the database is unavailable and the in-memory outbox is full');
      return;
    }
    this.records.set(record._id, record);
    this.logger.warn({ template, messageId, err: { message: (error as Error).message } }, 'mail kept in memory until the database answers');
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.records.size === 0) return;
    this.timer = setTimeout(() => void this.storeAll(), RETRY_MS);
    this.timer.unref();
  }

  /**
   * One run at a time (the timer is set again only at its end). It stops at the first message the
   * database is unavailable for: the ones after it would wait out the same timeout.
   */
  private async storeAll(): Promise<void> {
    let stored = false;
    for (const record of [...this.records.values()]) {
      if (record.expiresAt.getTime() > Date.now()) {
        try {
          await this.hooks.store(record);
          stored = true;
        } catch (error) {
          if (isUnavailable(error)) break;
          this.refused(record, error);
        }
      } else {
        this.hooks.expired(record);
      }
      this.records.delete(record._id);
    }
    this.timer = undefined;
    this.schedule();
    if (stored) this.hooks.stored();
  }

  /** Neither the recipient nor the link: the record holds them sealed, and the line names the error only. */
  private refused({ template, messageId }: T, error: unknown): void {
    const { name, code } = error as { name?: unknown; code?: unknown };
    this.logger.error({ template, messageId, err: { name, code, message: (error as Error).message } }, 'mail lost: the database refused to store it');
  }
}
