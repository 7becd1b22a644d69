/**
 * Keeps a serving instance's keys in step with the key ring: every KEYS_REFRESH_SECONDS it reads
 * the ring (one query) and, when a key changed state, hands the new set to oidc-provider and to
 * the published JWKS. A failed read keeps the keys in use: signing never stops for a database
 * that is away.
 *
 * With KEY_ROTATION_DAYS, the same tick also takes the rotation steps that are due, on one
 * instance at a time (KeyRing.rotateIfDue, under the ring's lease), each audited.
 */
import type { Provider } from 'oidc-provider';
import type { AuditLog } from '../audit/log.ts';
import type { Logger } from '../observability/logger.ts';
import { publicJwk, type KeyRing, type PrivateJwks } from './keys.ts';
import { replaceProviderKeys } from './provider-keystore.ts';

export interface RefreshOptions {
  refreshSeconds: number;
  /** Automatic rotation period; undefined rotates only by hand. */
  rotationDays: number | undefined;
}

export class KeyRefresher {
  /** Undefined when OIDC_JWKS fixes the keys: nothing to refresh or rotate. */
  private readonly ring: KeyRing | undefined;
  private readonly provider: Provider;
  private readonly logger: Logger;
  private readonly audit: AuditLog;
  private readonly options: RefreshOptions;
  private applied: string;
  private failing = false;
  /** Said once until the ring has an active ES256 key again, not on every refresh. */
  private noSigner = false;
  /** The public JWKS served at /jwks: every key that is not retired, without private members. */
  publicJwks: PrivateJwks;

  constructor(deps: { ring: KeyRing | undefined; provider: Provider; logger: Logger; audit: AuditLog; jwks: PrivateJwks }, options: RefreshOptions) {
    this.ring = deps.ring;
    this.provider = deps.provider;
    this.logger = deps.logger;
    this.audit = deps.audit;
    this.options = options;
    this.publicJwks = { keys: deps.jwks.keys.map(publicJwk) };
    this.applied = fingerprintOf(deps.jwks);
  }

  /** Re-reads the ring; true when the keys in use changed. */
  async refresh(): Promise<boolean> {
    if (!this.ring) return false;
    const jwks = await this.ring.privateJwks();
    if (!jwks) {
      // Only a step forced past its checks (or a hand edit) gets here: keep signing with what we have.
      if (!this.noSigner) this.logger.error('the key ring has no active ES256 key: keeping the keys in use; promote one with `keys promote`');
      this.noSigner = true;
      return false;
    }
    this.noSigner = false;
    const fingerprint = fingerprintOf(jwks);
    if (fingerprint === this.applied) return false;
    replaceProviderKeys(this.provider, jwks);
    this.publicJwks = { keys: jwks.keys.map(publicJwk) };
    this.applied = fingerprint;
    this.logger.info({ keys: fingerprint }, 'signing keys changed');
    return true;
  }

  /** Takes the automatic rotation steps that are due; returns what it did. */
  async rotateIfDue(now = new Date()): Promise<string[]> {
    if (!this.ring || this.options.rotationDays === undefined) return [];
    const done = await this.ring.rotateIfDue(this.options.rotationDays, now);
    for (const step of done) {
      const [action, kid] = step.split(':');
      await this.audit.record({ actor: { sub: 'system:key-rotation', clientId: null }, action: `keys.${action}`, target: kid ?? null, outcome: 'success', ip: 'server', requestId: null });
    }
    if (done.length) this.logger.info({ steps: done }, 'automatic key rotation');
    return done;
  }

  /**
   * Records this instance's waits in the ring (so the CLI honours them), then refreshes (and
   * rotates when due) every refreshSeconds; returns a stop function.
   */
  async start(): Promise<() => void> {
    if (!this.ring) return () => {};
    await this.ring.recordTimings();
    const tick = async () => {
      try {
        await this.rotateIfDue();
        await this.refresh();
        if (this.failing) this.logger.info('signing keys readable again');
        this.failing = false;
      } catch (error) {
        if (!this.failing) this.logger.warn({ err: { message: (error as Error).message } }, 'reading the signing keys failed; keeping the keys in use');
        this.failing = true;
      }
    };
    const timer = setInterval(() => void tick(), this.options.refreshSeconds * 1000);
    timer.unref();
    return () => clearInterval(timer);
  }
}

function fingerprintOf(jwks: PrivateJwks): string {
  return jwks.keys.map((k) => `${k.kid}:${k.key_ops ? 'verify' : 'sign'}`).join(',');
}
