/**
 * Every sign-in attempt, counted (idp_signins_total) and written to the audit trail: a finished
 * sign-in once, by the method that finished it; each failed or refused step as it happens. The
 * event holds the client, the address, the account when the password matched one (`target`), and
 * for a failed password the email as typed, so an administrator can follow an attack on an
 * address; never a password or a code. Only administrators read the trail, so naming the email
 * there tells the person signing in nothing about whether the account exists.
 */
import type { Context } from 'koa';
import type { Metrics } from '../observability/metrics.ts';
import type { AuditLog } from './log.ts';

export type SignInStep = 'password' | 'second_step';
export type SignInMethod = 'password' | 'totp' | 'recovery_code';

interface Attempt {
  clientId: unknown;
  /** Known after the password matched. */
  accountId?: string | undefined;
}

export class SignInRecorder {
  private readonly metrics: Metrics;
  private readonly audit: AuditLog;

  constructor(metrics: Metrics, audit: AuditLog) {
    this.metrics = metrics;
    this.audit = audit;
  }

  async succeeded(ctx: Context, attempt: Attempt & { method: SignInMethod }): Promise<void> {
    this.metrics.signIns.inc({ outcome: 'success', method: attempt.method });
    await this.write(ctx, 'signin.success', 'success', attempt, { method: attempt.method });
  }

  /** A wrong password or code (or a form that could not be read). */
  async failed(ctx: Context, attempt: Attempt & { step: SignInStep; reason: string; email?: string | undefined }): Promise<void> {
    this.metrics.signIns.inc({ outcome: 'failure', method: attempt.step });
    await this.write(ctx, 'signin.failure', 'denied', attempt, { step: attempt.step, ...(attempt.email ? { email: attempt.email } : {}) }, attempt.reason);
  }

  /** Refused before any check: too many attempts, or a lock. */
  async refused(ctx: Context, attempt: Attempt & { step: SignInStep; email?: string | undefined }): Promise<void> {
    this.metrics.signIns.inc({ outcome: 'refused', method: attempt.step });
    await this.write(ctx, 'signin.refused', 'denied', attempt, { step: attempt.step, ...(attempt.email ? { email: attempt.email } : {}) }, 'too_many_attempts');
  }

  private async write(
    ctx: Context, action: string, outcome: 'success' | 'denied', attempt: Attempt, details: Record<string, string>, reason?: string,
  ): Promise<void> {
    const clientId = typeof attempt.clientId === 'string' ? attempt.clientId.slice(0, 200) : null;
    await this.audit.record({
      actor: { sub: attempt.accountId ?? null, clientId }, action, target: attempt.accountId ?? null, outcome,
      ...(reason ? { reason } : {}), details, ip: ctx.ip, requestId: (ctx.state.requestId as string | undefined) ?? null,
    });
  }
}
