/**
 * The only place that reads the environment. `loadConfig` validates every variable at once and
 * either returns one frozen, typed object or throws a ConfigError listing each bad variable on its
 * own line, so start-up stops before anything listens or connects.
 */
import path from 'node:path';
import { Reader, type Env } from './config-reader.ts';
import {
  readCookieKeys, readDocuments, readHttp, readIssuer, readJwks, readMetrics, readRateLimits, readSecretsKeys,
} from './config-sections.ts';

export type NodeEnv = 'development' | 'production' | 'test';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface Config {
  readonly nodeEnv: NodeEnv;
  readonly isProduction: boolean;
  readonly issuer: string;
  /** True when the issuer is https: cookies are then Secure and HSTS is sent. */
  readonly secureTransport: boolean;
  readonly host: string;
  readonly port: number;
  readonly trustProxy: boolean;
  /** Undefined means "use the local development server under dataDir" (never in production). */
  readonly mongodbUri: string | undefined;
  /** The longest one MongoDB operation may wait for its answer before it fails. */
  readonly mongodbOperationTimeoutMs: number;
  /** Limits that keep one instance answering under load, slow clients and failing dependencies. */
  readonly http: {
    /** Every request is answered (503 if need be) within this time. */
    readonly requestDeadlineMs: number;
    /** Requests worked on at once; more are refused with 503 at once. */
    readonly maxRequestsInFlight: number;
    readonly maxConnections: number;
    /** Time allowed for a request's headers, and for the whole request including its body. */
    readonly headersTimeoutMs: number;
    readonly requestTimeoutMs: number;
    /** How long an idle keep-alive connection stays open. */
    readonly keepAliveTimeoutMs: number;
    /** On SIGTERM, how long to keep taking requests while readiness already fails. */
    readonly shutdownDelayMs: number;
    /** Then, how long requests in flight may take before connections are cut. */
    readonly shutdownGraceMs: number;
  };
  /** Undefined means "run without Redis" (never in production). */
  readonly redisUrl: string | undefined;
  /** Undefined means "generate per-process keys" (never in production). */
  readonly cookieKeys: readonly string[] | undefined;
  /** Operator-supplied private JWKS; otherwise keys are kept in MongoDB. */
  readonly jwks: { keys: Record<string, unknown>[] } | undefined;
  readonly logLevel: LogLevel;
  readonly dataDir: string;
  readonly pkceRequiredForConfidentialClients: boolean;
  readonly sweepIntervalSeconds: number;
  /** How long audit events are kept (days). */
  readonly auditRetentionDays: number;
  /** How often each instance re-reads JWT access-token revocations (seconds). */
  readonly revocationRefreshSeconds: number;
  /** How long an instance may use client metadata it has read (0: always read). */
  readonly clientCacheSeconds: number;
  /**
   * Prometheus metrics (src/observability/metrics.ts): `port` gives them a listener of their own;
   * otherwise `token` puts them on the main port behind a bearer token; `onMainPort` says whether
   * the main port serves /metrics at all (with the token, or outside production).
   */
  readonly metrics: { readonly port: number | undefined; readonly token: string | undefined; readonly onMainPort: boolean };
  /** OpenTelemetry tracing (src/observability/tracing.ts): on only when an OTLP endpoint is set. */
  readonly tracing: { readonly endpoint: string | undefined; readonly serviceName: string };
  /** Signing keys kept in MongoDB (src/oidc/keys.ts). */
  readonly keys: {
    /** Rotate automatically: a new key every this many days (undefined: only by `keys rotate`). */
    readonly rotationDays: number | undefined;
    /** How often each instance re-reads the keys, so a rotation step reaches it without restart. */
    readonly refreshSeconds: number;
    /** The JWKS's Cache-Control max-age: how long relying parties may keep it (seconds). */
    readonly jwksCacheSeconds: number;
  };
  /**
   * SECRETS_KEY: AES-256-GCM keys for secrets at rest (signing keys, client and TOTP secrets), newest
   * first; the first encrypts, any of them decrypts. Undefined stores them in the clear
   * (development only).
   */
  readonly secretsKeys: readonly SecretsKey[] | undefined;
  /** Dynamic client registration (RFC 7591/7592), only with an initial access token. */
  readonly clientRegistration: { readonly enabled: boolean };
  readonly ttl: {
    readonly accessToken: number;
    readonly authorizationCode: number;
    readonly clientCredentials: number;
    readonly idToken: number;
    readonly refreshToken: number;
    readonly session: number;
    readonly interaction: number;
    readonly grant: number;
  };
  readonly argon2: { readonly memoryKiB: number; readonly timeCost: number; readonly parallelism: number };
  readonly accounts: {
    /** Self-service registration page (default: on except in production). */
    readonly registrationEnabled: boolean;
    /** Refuse sign-in until the email address is verified. */
    readonly requireVerifiedEmail: boolean;
    readonly passwordMinLength: number;
    /** Lowest zxcvbn score (0-4) a new password may have. */
    readonly passwordMinScore: number;
  };
  readonly mail: {
    /** smtp:// or smtps:// URL; undefined in development means "write .eml files to outboxDir". */
    readonly smtpUrl: string | undefined;
    readonly from: string;
    readonly outboxDir: string;
    /** Delays between attempts at a message start here and double up to retryMaxSeconds. */
    readonly retryBaseSeconds: number;
    readonly retryMaxSeconds: number;
  };
  readonly rateLimits: Readonly<Record<RateLimitName, Limit>>;
  /** Consecutive failed sign-ins lock an account for baseSeconds, doubling up to maxSeconds. */
  readonly lockout: { readonly threshold: number; readonly baseSeconds: number; readonly maxSeconds: number };
  readonly documents: {
    /** The API's resource indicator: the `aud` of every access token it accepts. */
    readonly audience: string;
    /** Where the API reads the provider's public keys (default: the issuer's jwks_uri). */
    readonly jwksUri: string;
    readonly maxFileBytes: number;
    /** Media types (lower case, without parameters) a document's file may have. */
    readonly fileTypes: readonly string[];
    /** Browser origins allowed to call the API (CORS); empty means none. */
    readonly corsOrigins: readonly string[];
  };
}

/** One SECRETS_KEY entry: `id:key`, the key 32 random bytes in base64 or base64url. */
export interface SecretsKey {
  readonly id: string;
  readonly key: Buffer;
}

/** A rate limit: at most `points` events per `seconds`. */
export interface Limit {
  readonly points: number;
  readonly seconds: number;
}

/** The longest TTL_ACCESS_TOKEN and TTL_CLIENT_CREDENTIALS accepted. */
export const MAX_ACCESS_TOKEN_SECONDS = 24 * 60 * 60;

export const RATE_LIMIT_NAMES = [
  'signinAttemptsPerIp', 'signinPerIp', 'signinPerAccount', 'mfaPerAccount', 'registerPerIp', 'registerPerEmail',
  'resetPerIp', 'resetPerEmail', 'verifyPerIp', 'verifyPerEmail', 'tokenPerClient', 'deviceCodePerIp',
] as const;
export type RateLimitName = (typeof RATE_LIMIT_NAMES)[number];

export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}


/**
 * Safe to serve from our origin as attachments. HTML, SVG and XML are left out on purpose: they
 * can carry script if a browser is ever persuaded to render them.
 */
export const DEFAULT_FILE_TYPES = [
  'application/pdf', 'application/json', 'text/plain', 'text/markdown', 'text/csv',
  'image/png', 'image/jpeg', 'image/gif', 'image/webp',
] as const;

export function loadConfig(env: Env): Config {
  const r = new Reader(env);
  const nodeEnv = r.oneOf<NodeEnv>('NODE_ENV', ['development', 'production', 'test'], 'development');
  const isProduction = nodeEnv === 'production';
  const port = r.int('PORT', 3000, 0, 65535);
  const day = 24 * 60 * 60;

  const issuer = readIssuer(r, port, isProduction);
  const config: Config = {
    nodeEnv,
    isProduction,
    issuer,
    secureTransport: issuer.startsWith('https:'),
    host: r.string('HOST', isProduction ? '0.0.0.0' : '127.0.0.1'),
    port,
    trustProxy: r.bool('TRUST_PROXY', false),
    mongodbUri: r.url('MONGODB_URI', ['mongodb:', 'mongodb+srv:']),
    mongodbOperationTimeoutMs: r.int('MONGODB_OPERATION_TIMEOUT_MS', 5000, 500, 120_000),
    http: readHttp(r),
    redisUrl: r.url('REDIS_URL', ['redis:', 'rediss:']),
    cookieKeys: readCookieKeys(r, isProduction),
    jwks: readJwks(r),
    logLevel: r.oneOf<LogLevel>('LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
    dataDir: path.resolve(r.string('LOCAL_DATA_DIR', '.data')),
    pkceRequiredForConfidentialClients: r.bool('PKCE_REQUIRED_FOR_CONFIDENTIAL_CLIENTS', true),
    sweepIntervalSeconds: r.int('EXPIRED_SWEEP_INTERVAL_SECONDS', 60, 5, day),
    clientCacheSeconds: r.int('CLIENT_CACHE_SECONDS', 10, 0, 300),
    metrics: readMetrics(r, isProduction, port),
    tracing: {
      endpoint: r.url('OTEL_EXPORTER_OTLP_ENDPOINT', ['http:', 'https:']),
      serviceName: r.string('OTEL_SERVICE_NAME', 'oidc-idp'),
    },
    keys: {
      rotationDays: r.raw('KEY_ROTATION_DAYS') === undefined ? undefined : r.int('KEY_ROTATION_DAYS', 90, 1, 3650),
      refreshSeconds: r.int('KEYS_REFRESH_SECONDS', 60, 1, 3600),
      jwksCacheSeconds: r.int('JWKS_CACHE_SECONDS', 300, 1, 86_400),
    },
    secretsKeys: readSecretsKeys(r, isProduction),
    clientRegistration: { enabled: r.bool('CLIENT_REGISTRATION_ENABLED', false) },
    revocationRefreshSeconds: r.int('REVOCATION_REFRESH_SECONDS', 5, 1, 300),
    auditRetentionDays: r.int('AUDIT_RETENTION_DAYS', 365, 1, 36_500),
    ttl: {
      accessToken: r.int('TTL_ACCESS_TOKEN', 60 * 60, 60, MAX_ACCESS_TOKEN_SECONDS),
      authorizationCode: r.int('TTL_AUTHORIZATION_CODE', 60, 10, 60),
      clientCredentials: r.int('TTL_CLIENT_CREDENTIALS', 10 * 60, 60, MAX_ACCESS_TOKEN_SECONDS),
      idToken: r.int('TTL_ID_TOKEN', 60 * 60, 60, day),
      refreshToken: r.int('TTL_REFRESH_TOKEN', 14 * day, 60 * 60, 365 * day),
      session: r.int('TTL_SESSION', 14 * day, 5 * 60, 365 * day),
      interaction: r.int('TTL_INTERACTION', 60 * 60, 60, day),
      grant: r.int('TTL_GRANT', 14 * day, 60 * 60, 365 * day),
    },
    argon2: {
      memoryKiB: r.int('ARGON2_MEMORY_KIB', 19456, 19456, 4 * 1024 * 1024),
      timeCost: r.int('ARGON2_TIME_COST', 2, 2, 20),
      parallelism: r.int('ARGON2_PARALLELISM', 1, 1, 16),
    },
    accounts: {
      registrationEnabled: r.bool('REGISTRATION_ENABLED', !isProduction),
      requireVerifiedEmail: r.bool('REQUIRE_VERIFIED_EMAIL', false),
      passwordMinLength: r.int('PASSWORD_MIN_LENGTH', 12, 8, 64),
      passwordMinScore: r.int('PASSWORD_MIN_SCORE', 3, 0, 4),
    },
    mail: {
      smtpUrl: r.url('SMTP_URL', ['smtp:', 'smtps:']),
      from: r.string('MAIL_FROM', 'oidc-idp <no-reply@localhost>'),
      outboxDir: path.resolve(r.string('LOCAL_DATA_DIR', '.data'), 'mail'),
      retryBaseSeconds: r.int('MAIL_RETRY_BASE_SECONDS', 5, 1, 3600),
      retryMaxSeconds: r.int('MAIL_RETRY_MAX_SECONDS', 300, 1, 86_400),
    },
    rateLimits: readRateLimits(r),
    lockout: {
      threshold: r.int('LOCKOUT_THRESHOLD', 5, 2, 100),
      baseSeconds: r.int('LOCKOUT_BASE_SECONDS', 30, 1, 86_400),
      maxSeconds: r.int('LOCKOUT_MAX_SECONDS', 3600, 1, 7 * 86_400),
    },
    documents: readDocuments(r, issuer, isProduction),
  };

  if (isProduction) {
    if (!config.mongodbUri) r.problems.push('MONGODB_URI: required in production');
    if (!config.redisUrl) r.problems.push('REDIS_URL: required in production (rate limits must be shared by all instances)');
    if (!config.mail.smtpUrl) r.problems.push('SMTP_URL: required in production (verification and reset mail)');
    // The server speaks plain HTTP, so an https issuer means TLS ends at a proxy, and only a
    // trusted X-Forwarded-Proto lets Secure cookies be set.
    if (config.secureTransport && !config.trustProxy) {
      r.problems.push('TRUST_PROXY: must be true in production with an https ISSUER (TLS ends at the proxy in front of this server)');
    }
  }
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return Object.freeze(config);
}
