/**
 * DPoP proofs at the documents API (RFC 9449 section 4.3 and 7.1). A request with a DPoP-bound
 * access token (`cnf.jkt`) carries `Authorization: DPoP <token>` and one `DPoP` header: a JWT
 * signed with the client's key, whose public JWK is in its header. It is accepted when its
 * type, algorithm and signature are right, the key is the one the token is bound to (RFC 7638
 * thumbprint), it names this request (`htm`, `htu`), it is fresh (`iat`), it is for this token
 * (`ath`), and its `jti` was not seen before.
 *
 * `htu` is compared with the public URL of the request: the ISSUER's origin (or the API
 * audience's) and the path, never the Host or X-Forwarded-* headers, which the client writes.
 * Seen `jti`s are kept in Redis, shared by every instance, for as long as their proof would be
 * accepted; while Redis fails (or without it, in development) each instance keeps them in its
 * own memory, so during an outage a proof could be replayed once at another instance: the same
 * trade-off as the rate limits (src/security/limiter-store.ts).
 * Server-provided nonces (`DPoP-Nonce`) are not used.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { calculateJwkThumbprint, decodeProtectedHeader, EmbeddedJWK, errors as joseErrors, jwtVerify, type JWK } from 'jose';
import type { Logger } from '../observability/logger.ts';
import { ApiProblem } from './problem.ts';

/** Asymmetric algorithms only (RFC 9449 section 4.2): never "none", never a MAC. */
export const DPOP_ALGORITHMS = ['ES256', 'ES384', 'EdDSA', 'Ed25519', 'PS256', 'RS256'] as const;
/** How old a proof may be, and how far ahead of our clock its iat may be. */
const MAX_AGE_SECONDS = 60;
const CLOCK_SKEW_SECONDS = 10;
const MAX_REMEMBERED_IN_MEMORY = 100_000;

export const DPOP_CHALLENGE = `DPoP realm="documents", algs="${DPOP_ALGORITHMS.join(' ')}"`;

function challenge(error: 'invalid_dpop_proof' | 'invalid_token', reason: string): string {
  return `${DPOP_CHALLENGE}, error="${error}", error_description="${reason}"`;
}

export function invalidDpopProof(reason: string): ApiProblem {
  return new ApiProblem('invalid-token', 401, `The DPoP proof was rejected: ${reason}.`, {
    headers: { 'WWW-Authenticate': challenge('invalid_dpop_proof', reason) },
  });
}

/** A token refused on a request that used (or should have used) the DPoP scheme. */
export function invalidDpopToken(reason: string): ApiProblem {
  return new ApiProblem('invalid-token', 401, `The access token was rejected: ${reason}.`, {
    headers: { 'WWW-Authenticate': challenge('invalid_token', reason) },
  });
}

/** Remembers each proof's jti (per key) until the proof is too old to be accepted anyway. */
export class SeenProofs {
  private readonly redis: Redis | undefined;
  private readonly logger: Logger;
  private readonly memory = new Map<string, number>();
  private redisFailing = false;

  constructor(redis: Redis | undefined, logger: Logger) {
    this.redis = redis;
    this.logger = logger;
  }

  /** True the first time a (key, jti) pair is seen; `ttlMs` is how long it must be remembered. */
  async first(jkt: string, jti: string, ttlMs: number): Promise<boolean> {
    // Hashed, as the rate limits' keys are: Redis holds nothing the client wrote.
    const key = createHash('sha256').update(`${jkt}\0${jti}`).digest('base64url');
    const now = Date.now();
    // Memory first, always: it still knows this instance's proofs when Redis stops answering.
    const known = this.memory.get(key);
    if (known !== undefined && known > now) return false;
    this.remember(key, now + ttlMs, now);
    if (!this.redis || this.redis.status !== 'ready') return true;
    try {
      const set = await this.redis.set(`idp:dpop-jti:${key}`, '1', 'PX', ttlMs, 'NX');
      if (this.redisFailing) this.logger.info('redis answering again: DPoP proof replay is checked across instances again');
      this.redisFailing = false;
      return set === 'OK';
    } catch (error) {
      if (!this.redisFailing) this.logger.warn({ err: { message: (error as Error).message } }, 'redis failed: DPoP proof replay is checked per instance until it answers');
      this.redisFailing = true;
      return true;
    }
  }

  private remember(key: string, expiresAt: number, now: number): void {
    if (this.memory.size >= MAX_REMEMBERED_IN_MEMORY) {
      for (const [k, until] of this.memory) if (until <= now) this.memory.delete(k);
      // Still full of live entries: the oldest go (entries are in insertion order).
      for (const k of this.memory.keys()) {
        if (this.memory.size < MAX_REMEMBERED_IN_MEMORY) break;
        this.memory.delete(k);
      }
    }
    this.memory.set(key, expiresAt);
  }
}

export interface ProofRequest {
  /** The DPoP header as received (Node joins repeated headers with ", "). */
  proof: string | string[] | undefined;
  method: string;
  /** The request path (without query). */
  path: string;
  accessToken: string;
  /** The thumbprint the access token is bound to (cnf.jkt). */
  jkt: string;
}

export class DpopVerifier {
  private readonly origins: ReadonlySet<string>;
  private readonly seen: SeenProofs;

  /** `publicUrls`: where clients reach the API (the issuer, the API's audience). */
  constructor(publicUrls: readonly string[], seen: SeenProofs) {
    this.origins = new Set(publicUrls.map((url) => URL.parse(url)?.origin).filter((o): o is string => !!o && o !== 'null'));
    this.seen = seen;
  }

  /** Throws an invalid_dpop_proof problem unless the proof is valid for this request and token. */
  async verify({ proof, method, path, accessToken, jkt }: ProofRequest): Promise<void> {
    if (proof === undefined || proof === '') throw invalidDpopProof('a DPoP-bound token needs a DPoP proof header');
    if (Array.isArray(proof) || /[\s,]/.test(proof)) throw invalidDpopProof('exactly one DPoP header is allowed');
    let payload: Record<string, unknown>;
    let jwk: JWK;
    try {
      const header = decodeProtectedHeader(proof);
      if (typeof header.alg !== 'string' || !(DPOP_ALGORITHMS as readonly string[]).includes(header.alg)) throw invalidDpopProof('the proof algorithm is not accepted');
      const verified = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: [...DPOP_ALGORITHMS] });
      payload = verified.payload as Record<string, unknown>;
      jwk = verified.protectedHeader.jwk!;
    } catch (error) {
      if (error instanceof ApiProblem) throw error;
      throw invalidDpopProof(describe(error));
    }
    const { htm, htu, iat, jti, ath } = payload;
    if (typeof jti !== 'string' || jti.length === 0 || jti.length > 256) throw invalidDpopProof('the proof jti is missing or too long');
    if (typeof iat !== 'number') throw invalidDpopProof('the proof has no iat');
    if (htm !== method) throw invalidDpopProof('the proof is for another method (htm)');
    if (typeof htu !== 'string' || !this.matchesUrl(htu, path)) throw invalidDpopProof('the proof is for another URL (htu)');
    const now = Date.now() / 1000;
    if (iat < now - MAX_AGE_SECONDS || iat > now + CLOCK_SKEW_SECONDS) throw invalidDpopProof('the proof is not fresh (iat)');
    if (ath !== createHash('sha256').update(accessToken).digest('base64url')) throw invalidDpopProof('the proof is not for this access token (ath)');
    if ((await calculateJwkThumbprint(jwk, 'sha256')) !== jkt) throw invalidDpopProof('the proof key is not the key the token is bound to');
    const ttlMs = Math.max(1000, Math.ceil((iat + MAX_AGE_SECONDS + 1 - now) * 1000));
    if (!(await this.seen.first(jkt, jti, ttlMs))) throw invalidDpopProof('the proof was used before (jti)');
  }

  /** RFC 9449 section 4.3: the URI without query and fragment, after syntax-based normalization. */
  private matchesUrl(htu: string, path: string): boolean {
    const actual = URL.parse(htu);
    if (!actual || !this.origins.has(actual.origin)) return false;
    const expected = URL.parse(path, actual.origin);
    return expected !== null && actual.pathname === expected.pathname;
  }
}

/** A short reason without quotes (it goes into a quoted WWW-Authenticate parameter). */
function describe(error: unknown): string {
  if (error instanceof joseErrors.JWTClaimValidationFailed && error.claim === 'typ') return 'the proof is not a DPoP proof (typ)';
  if (error instanceof joseErrors.JWTClaimValidationFailed || error instanceof joseErrors.JWTExpired) return `the proof ${error.claim} claim is not accepted`;
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return 'the proof signature is not valid';
  if (error instanceof joseErrors.JOSEAlgNotAllowed || error instanceof joseErrors.JOSENotSupported) return 'the proof algorithm or key is not accepted';
  return 'the proof is malformed';
}
