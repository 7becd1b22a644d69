/**
 * Access-token verification for the documents API (RFC 9068 JWT access tokens, RFC 6750 bearer
 * usage, RFC 9449 DPoP-bound tokens: see dpop.ts). Tokens are checked locally against the provider's public keys, fetched from its JWKS
 * endpoint and cached: the provider is contacted again only when the cache is old (10 minutes) or
 * a token names a key id the cache does not have (at most once every 30 seconds), never per request.
 */
import { createRemoteJWKSet, customFetch, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import type { Middleware } from 'koa';
import type { Logger } from '../observability/logger.ts';
import type { TokenRevocations } from '../oidc/revocations.ts';
import { DPOP_CHALLENGE, invalidDpopToken, type DpopVerifier } from './dpop.ts';
import { ApiProblem } from './problem.ts';

/** Asymmetric algorithms the provider signs with. HS* and "none" can never verify. */
export const ACCESS_TOKEN_ALGORITHMS = ['ES256', 'EdDSA', 'RS256'];
const CLOCK_SKEW_SECONDS = 5;

/** Who is calling: an end user through a client, or a client on its own (client_credentials). */
export interface Caller {
  kind: 'user' | 'client';
  /** The token's `sub`: an account id, or the client id for client_credentials tokens. */
  sub: string;
  clientId: string;
  scopes: ReadonlySet<string>;
  /** How the request presented the token, so that a later refusal challenges in the same scheme. */
  scheme?: 'Bearer' | 'DPoP';
}

/** A verified token: who it speaks for, and the key it is bound to (RFC 9449 cnf.jkt), if any. */
export interface VerifiedAccess {
  caller: Caller;
  jkt: string | undefined;
}

interface VerifiedToken extends VerifiedAccess {
  iat: number;
  /** When the cached verification stops being used (ms): the token's exp at the latest. */
  expiresAt: number;
}

const MAX_CACHED_TOKENS = 5000;
/**
 * A cached verification is redone at least this often. (A key removed from the provider's JWKS
 * can still verify for up to this plus the key set's own 10-minute cache.)
 */
const MAX_CACHE_MS = 5 * 60_000;

export interface VerifierOptions {
  issuer: string;
  audience: string;
  jwksUri: string;
  revocations: TokenRevocations;
  logger: Logger;
  /** Checks the proofs of DPoP-bound tokens; without it such tokens are refused. */
  dpop?: DpopVerifier | undefined;
}

export class AccessTokenVerifier {
  private readonly options: VerifierOptions;
  private readonly keySet: ReturnType<typeof createRemoteJWKSet>;
  private readonly verified = new Map<string, VerifiedToken>();
  /** How many times the key set was fetched from the provider (an observable cost). */
  keySetFetches = 0;
  /** Proof verification for DPoP-bound tokens (dpop.ts), when configured. */
  readonly dpop: DpopVerifier | undefined;

  constructor(options: VerifierOptions) {
    this.options = options;
    this.dpop = options.dpop;
    this.keySet = createRemoteJWKSet(new URL(options.jwksUri), {
      cacheMaxAge: 10 * 60_000,
      cooldownDuration: 30_000,
      timeoutDuration: 5_000,
      [customFetch]: (url: string, init: RequestInit) => {
        this.keySetFetches += 1;
        options.logger.info({ jwksUri: options.jwksUri }, 'fetching the provider key set');
        return fetch(url, init);
      },
    });
  }

  /** The caller a token speaks for, or an invalid-token problem saying (briefly) why not. */
  async verify(token: string): Promise<Caller> {
    return (await this.authenticate(token)).caller;
  }

  /** The same, with the key the token is bound to. */
  async authenticate(token: string): Promise<VerifiedAccess> {
    const now = Date.now();
    let entry = this.verified.get(token);
    if (entry && entry.expiresAt <= now) this.verified.delete(token);
    if (!entry || entry.expiresAt <= now) entry = await this.verifyJwt(token, now);
    // Revocation is looked at on every use: it can happen after the token was first seen.
    if (this.options.revocations.isRevoked(entry.caller.kind === 'user' ? entry.caller.sub : undefined, entry.caller.clientId, entry.iat)) {
      throw invalidToken('the token has been revoked');
    }
    return { caller: entry.caller, jkt: entry.jkt };
  }

  /**
   * Full verification, remembered until the token expires: a client sends the same token many
   * times, and the signature check is the largest part of a request's CPU. The cache is keyed by
   * the whole token (exact bytes) and bounded; the oldest entries go first.
   */
  private async verifyJwt(token: string, now: number): Promise<VerifiedToken> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.keySet, {
        issuer: this.options.issuer,
        audience: this.options.audience,
        algorithms: ACCESS_TOKEN_ALGORITHMS,
        typ: 'at+jwt',
        clockTolerance: CLOCK_SKEW_SECONDS,
        requiredClaims: ['sub', 'client_id', 'exp', 'iat', 'jti'],
      }));
    } catch (error) {
      const reason = describe(error);
      if (reason) throw invalidToken(reason);
      this.options.logger.error({ err: error, jwksUri: this.options.jwksUri }, 'verifying an access token failed: the key set is unavailable');
      throw new ApiProblem('server-error', 503, 'Access tokens cannot be verified right now. Try again shortly.', { headers: { 'Retry-After': '5' } });
    }
    const { sub, client_id: clientId, scope, cnf } = payload;
    if (typeof sub !== 'string' || typeof clientId !== 'string' || (scope !== undefined && typeof scope !== 'string')) {
      throw invalidToken('the token claims are malformed');
    }
    const jkt = (cnf as { jkt?: unknown } | undefined)?.jkt;
    if (cnf !== undefined && (typeof cnf !== 'object' || cnf === null || typeof jkt !== 'string')) {
      // A confirmation this API cannot check (mTLS x5t#S256, ...) is never ignored.
      throw invalidToken('the token is bound to a key in a way this API does not support');
    }
    const entry: VerifiedToken = {
      caller: {
        // oidc-provider sets sub to the client id when no end user is involved (client_credentials).
        kind: sub === clientId ? 'client' : 'user',
        sub,
        clientId,
        scopes: new Set((scope ?? '').split(' ').filter(Boolean)),
      },
      jkt: jkt as string | undefined,
      iat: payload.iat!,
      expiresAt: Math.min(payload.exp! * 1000, now + MAX_CACHE_MS),
    };
    if (this.verified.size >= MAX_CACHED_TOKENS) this.verified.delete(this.verified.keys().next().value!);
    this.verified.set(token, entry);
    return entry;
  }
}

/**
 * A short reason for the client (it goes into a quoted WWW-Authenticate parameter, so it has no
 * quotes or backslashes), or undefined when the token was not at fault: the provider's key set
 * could not be fetched, which is answered as a server problem, not as a bad token.
 */
function describe(error: unknown): string | undefined {
  if (error instanceof joseErrors.JWTExpired) return 'the token has expired';
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    return error.claim === 'typ' ? 'the token is not an access token (typ)' : `the ${error.claim} claim is not accepted here`;
  }
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return 'the token signature is not valid';
  if (error instanceof joseErrors.JWKSNoMatchingKey || error instanceof joseErrors.JWKSMultipleMatchingKeys) {
    return 'the token was not signed by a key of this provider';
  }
  if (error instanceof joseErrors.JOSEAlgNotAllowed || error instanceof joseErrors.JOSENotSupported) {
    return 'the token is signed with an algorithm that is not accepted';
  }
  if (error instanceof joseErrors.JWTInvalid || error instanceof joseErrors.JWSInvalid) return 'the token is malformed';
  return undefined;
}

const REALM = 'Bearer realm="documents"';

/** An invalid token, with the reason, so that a DPoP request can be answered in its own scheme. */
class TokenRejected extends ApiProblem {
  readonly reason: string;
  constructor(reason: string) {
    super('invalid-token', 401, `The access token was rejected: ${reason}.`, {
      headers: { 'WWW-Authenticate': `${REALM}, error="invalid_token", error_description="${reason}"` },
    });
    this.reason = reason;
  }
}

export function invalidToken(reason: string): ApiProblem {
  return new TokenRejected(reason);
}

export function insufficientScope(scope: string, scheme: Caller['scheme'] = 'Bearer'): ApiProblem {
  return new ApiProblem('insufficient-scope', 403, `This request needs the "${scope}" scope.`, {
    headers: { 'WWW-Authenticate': `${scheme === 'DPoP' ? DPOP_CHALLENGE : REALM}, error="insufficient_scope", scope="${scope}"` },
  });
}

// RFC 9110: the scheme name is case-insensitive.
const CREDENTIALS = /^(Bearer|DPoP) +([A-Za-z0-9\-._~+/]+=*)$/i;

/**
 * Authenticates the request from its Authorization header and puts the caller on
 * `ctx.state.caller`. Tokens in the query string or body are not accepted (they end up in logs).
 * A DPoP-bound token is accepted only with the DPoP scheme and a valid proof, never as a bearer
 * token (RFC 9449 section 7.2); a DPoP proof sent along with a token that is not bound is
 * ignored, as it binds nothing.
 */
export function bearer(verifier: AccessTokenVerifier): Middleware {
  return async (ctx, next) => {
    const header = ctx.get('authorization');
    if (!header) {
      // RFC 6750 section 3.1: no error code when the request carried no credentials at all.
      throw new ApiProblem('invalid-token', 401, 'This request needs a bearer access token for the documents API.', {
        headers: { 'WWW-Authenticate': REALM },
      });
    }
    const match = CREDENTIALS.exec(header);
    if (!match) {
      if (/^DPoP\b/i.test(header)) throw invalidDpopToken('the Authorization header is malformed');
      // Another scheme (Basic, ...) is not a bad token: RFC 6750 3.1 gives the challenge alone.
      if (!/^Bearer\b/i.test(header)) {
        throw new ApiProblem('invalid-token', 401, 'This API takes bearer access tokens only.', { headers: { 'WWW-Authenticate': REALM } });
      }
      throw invalidToken('the Authorization header is malformed');
    }
    const scheme = match[1]!.toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
    const token = match[2]!;
    const { caller, jkt } = await verifier.authenticate(token).catch((error: unknown) => {
      throw scheme === 'DPoP' && error instanceof TokenRejected ? invalidDpopToken(error.reason) : error;
    });
    if (scheme === 'DPoP') {
      if (!jkt) throw invalidDpopToken('the token is not DPoP-bound, send it with the Bearer scheme');
      if (!verifier.dpop) throw invalidDpopToken('DPoP-bound tokens are not accepted here');
      await verifier.dpop.verify({ proof: ctx.headers.dpop, method: ctx.method, path: ctx.path, accessToken: token, jkt });
    } else if (jkt) {
      throw invalidDpopToken('the token is DPoP-bound, send it with the DPoP scheme and a proof');
    }
    ctx.state.caller = scheme === 'DPoP' ? { ...caller, scheme } : caller;
    await next();
  };
}

export function requireScope(caller: Caller, scope: string): void {
  if (!caller.scopes.has(scope)) throw insufficientScope(scope, caller.scheme);
}
