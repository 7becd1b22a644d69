/**
 * The audit trail: who did what to which document, and every refused access. Events never hold a
 * token, a password or document content: only identifiers, the action and its outcome.
 */
import type { Collection, Connection } from 'mongoose';
import { uuidv7 } from '../ids.ts';
import type { Logger } from '../observability/logger.ts';

export type AuditOutcome = 'success' | 'denied';

export interface AuditEvent {
  /** A UUIDv7, so `_id` order is time order. */
  _id: string;
  at: Date;
  actor: { sub: string | null; clientId: string | null };
  action: string;
  target: string | null;
  outcome: AuditOutcome;
  /** Why access was denied (a short code), absent on success. */
  reason?: string;
  /** Identifiers and counts that say more about the action (never a secret). */
  details?: Record<string, string | number | boolean | null>;
  ip: string;
  requestId: string | null;
}

export type NewAuditEvent = Omit<AuditEvent, '_id' | 'at'>;

export interface TailFilter {
  actor?: string | undefined;
  /** An action, or a prefix of actions ending in a dot: `signin.` matches every sign-in event. */
  action?: string | undefined;
  since?: Date | undefined;
  limit: number;
}

export class AuditLog {
  private readonly events: Collection<AuditEvent>;
  private readonly logger: Logger;
  private ttl = false;
  private retentionMs = 0;

  constructor(connection: Connection, logger: Logger) {
    this.events = connection.collection<AuditEvent>('audit_events');
    this.logger = logger;
  }

  /**
   * Events are kept for `retentionDays`: removed by a TTL index where the server has them
   * (MongoDB), otherwise by a periodic sweep (see startRetention).
   */
  async ensureIndexes(retentionDays: number): Promise<void> {
    await this.events.createIndex({ 'actor.sub': 1, at: 1 });
    try {
      await this.events.createIndex({ at: 1 }, { expireAfterSeconds: retentionDays * 86_400, name: 'at_retention' });
      this.ttl = true;
    } catch {
      await this.events.createIndex({ at: 1 }, { name: 'at_sweep' });
    }
    this.retentionMs = retentionDays * 86_400_000;
  }

  /** Sweeps events past retention every hour where no TTL index does it; returns a stop function. */
  startRetention(): () => void {
    if (this.ttl) return () => {};
    const sweep = () => {
      this.events.deleteMany({ at: { $lt: new Date(Date.now() - this.retentionMs) } })
        .catch((error: unknown) => this.logger.error({ err: error }, 'sweeping old audit events failed'));
    };
    sweep();
    const timer = setInterval(sweep, 3_600_000);
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * Writes one event. A failed write is logged (with the event, which holds no secrets) but does
   * not fail the request it describes: the action itself has already happened.
   */
  async record(event: NewAuditEvent): Promise<void> {
    const at = new Date();
    try {
      await this.events.insertOne({ _id: uuidv7(at.getTime()), at, ...event });
    } catch (error) {
      this.logger.error({ err: error, audit: event }, 'writing an audit event failed');
    }
  }

  /**
   * An event with its id and time fixed now, to be stored with the change it describes (in the
   * same database write) and written here later with writeOnce.
   */
  static event(event: NewAuditEvent, at = new Date()): AuditEvent {
    return { _id: uuidv7(at.getTime()), at, ...event };
  }

  /**
   * Writes events that may have been written before (by another request or a relay): each id is
   * stored once. Unlike record, a failure is thrown: the caller keeps the events to retry.
   */
  async writeOnce(events: readonly AuditEvent[]): Promise<void> {
    // The unique _id makes the insert itself the check: no read first (FerretDB would scan for an $in).
    for (const event of events) {
      try {
        await this.events.insertOne(event);
      } catch (error) {
        if ((error as { code?: unknown }).code !== 11000) throw error;
      }
    }
  }

  /** The latest `limit` events matching the filter, oldest first (like `tail`). */
  async tail(filter: TailFilter): Promise<AuditEvent[]> {
    const latest = await this.events.find(query(filter)).sort({ _id: -1 }).limit(filter.limit).toArray();
    return latest.reverse();
  }

  /** Up to `limit` events matching the filter after the event `after` (by id), oldest first. */
  async page(filter: TailFilter & { until?: Date | undefined; after?: string | undefined }): Promise<AuditEvent[]> {
    const q = query(filter);
    if (filter.until !== undefined) q.at = { ...(q.at as object | undefined), $lt: filter.until };
    if (filter.after !== undefined) q._id = { $gt: filter.after };
    return this.events.find(q).sort({ _id: 1 }).limit(filter.limit).toArray();
  }
}

function query(filter: TailFilter): Record<string, unknown> {
  const q: Record<string, unknown> = {};
  if (filter.actor !== undefined) q['actor.sub'] = filter.actor;
  if (filter.action !== undefined) {
    q.action = filter.action.endsWith('.') ? { $regex: `^${filter.action.replaceAll('.', '\\.')}` } : filter.action;
  }
  if (filter.since !== undefined) q.at = { $gte: filter.since };
  return q;
}
