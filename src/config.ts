/**
 * The only place that reads the environment. `loadConfig` validates every variable at once and
 * either returns one frozen, typed object or throws a ConfigError listing each bad variable on its
 * own line, so start-up stops before anything listens or connects.
 */
import path from 'node:path';
import { Reader, type Env } from './config-reader.ts';

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

const MEDIA_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/;

function readList(r: Reader, name: string): string[] | undefined {
  const value = r.raw(name);
  return value === undefined ? undefined : value.split(',').map((item) => item.trim()).filter(Boolean);
}

function readDocuments(r: Reader, issuer: string, isProduction: boolean): Config['documents'] {
  // The default derives from ISSUER, whose own problems are reported under its name.
  const given = r.raw('DOCUMENTS_API_AUDIENCE');
  const audience = given ?? `${issuer}/api`;
  const parsed = given === undefined ? undefined : URL.parse(given);
  if (given !== undefined && (!parsed || !['https:', 'http:'].includes(parsed.protocol) || given.includes('#'))) {
    r.problems.push(`DOCUMENTS_API_AUDIENCE: expected an absolute http(s) URL without a fragment, got "${given}"`);
  } else if (parsed && isProduction && parsed.protocol === 'http:' && !LOCALHOST.has(parsed.hostname)) {
    r.problems.push('DOCUMENTS_API_AUDIENCE: must use https in production');
  }
  const jwksUri = r.url('DOCUMENTS_API_JWKS_URI', ['http:', 'https:']) ?? `${issuer}/jwks`;
  const fileTypes = readList(r, 'DOCUMENTS_FILE_TYPES')?.map((t) => t.toLowerCase()) ?? [...DEFAULT_FILE_TYPES];
  const badType = fileTypes.find((t) => !MEDIA_TYPE.test(t));
  if (badType !== undefined || fileTypes.length === 0) {
    r.problems.push(`DOCUMENTS_FILE_TYPES: expected comma-separated media types such as "application/pdf,image/png"${badType ? `, got "${badType}"` : ''}`);
  }
  const corsOrigins = readList(r, 'DOCUMENTS_API_CORS_ORIGINS') ?? [];
  const badOrigin = corsOrigins.find((o) => URL.parse(o)?.origin !== o);
  if (badOrigin !== undefined) {
    r.problems.push(`DOCUMENTS_API_CORS_ORIGINS: expected comma-separated origins such as "https://app.example.com" (scheme, host and port only), got "${badOrigin}"`);
  }
  return {
    audience,
    jwksUri,
    maxFileBytes: r.int('DOCUMENTS_MAX_FILE_BYTES', 10 * 1024 * 1024, 1, 1024 * 1024 * 1024),
    fileTypes: [...new Set(fileTypes)],
    corsOrigins,
  };
}

/** RATE_LIMIT_* variables: "points/seconds", e.g. "30/60" for 30 per minute. */
const RATE_LIMIT_DEFAULTS: Record<RateLimitName, [env: string, points: number, seconds: number]> = {
  // Every sign-in attempt from one address, successful or not: flood protection only, sized for
  // hundreds of people behind one NAT. The limits after it count failures only.
  signinAttemptsPerIp: ['RATE_LIMIT_SIGNIN_ATTEMPTS_PER_IP', 1200, 60],
  signinPerIp: ['RATE_LIMIT_SIGNIN_PER_IP', 60, 60],
  signinPerAccount: ['RATE_LIMIT_SIGNIN_PER_ACCOUNT', 10, 300],
  mfaPerAccount: ['RATE_LIMIT_MFA_PER_ACCOUNT', 10, 300],
  registerPerIp: ['RATE_LIMIT_REGISTER_PER_IP', 10, 3600],
  registerPerEmail: ['RATE_LIMIT_REGISTER_PER_EMAIL', 3, 3600],
  resetPerIp: ['RATE_LIMIT_RESET_PER_IP', 10, 3600],
  resetPerEmail: ['RATE_LIMIT_RESET_PER_EMAIL', 3, 3600],
  verifyPerIp: ['RATE_LIMIT_VERIFY_PER_IP', 10, 3600],
  verifyPerEmail: ['RATE_LIMIT_VERIFY_PER_EMAIL', 3, 3600],
  tokenPerClient: ['RATE_LIMIT_TOKEN_PER_CLIENT', 600, 60],
  // Codes typed on the /device page: a user code has 20^8 (about 2^34.6) values, so guessing needs far more.
  deviceCodePerIp: ['RATE_LIMIT_DEVICE_CODE_PER_IP', 20, 300],
};

function readRateLimits(r: Reader): Config['rateLimits'] {
  const limits = {} as Record<RateLimitName, Limit>;
  for (const name of RATE_LIMIT_NAMES) {
    const [env, points, seconds] = RATE_LIMIT_DEFAULTS[name];
    const value = r.raw(env);
    const match = value === undefined ? undefined : /^(\d{1,7})\/(\d{1,6})$/.exec(value);
    if (value !== undefined && (!match || Number(match[1]) < 1 || Number(match[2]) < 1)) {
      r.problems.push(`${env}: expected "points/seconds" such as "${points}/${seconds}", got "${value}"`);
    }
    limits[name] = match ? { points: Number(match[1]), seconds: Number(match[2]) } : { points, seconds };
  }
  return limits;
}

function readHttp(r: Reader): Config['http'] {
  const seconds = (name: string, fallback: number, min: number, max: number) => r.int(name, fallback, min, max) * 1000;
  const http = {
    requestDeadlineMs: seconds('REQUEST_TIMEOUT_SECONDS', 10, 1, 300),
    maxRequestsInFlight: r.int('MAX_REQUESTS_IN_FLIGHT', 256, 1, 100_000),
    maxConnections: r.int('MAX_CONNECTIONS', 2048, 1, 1_000_000),
    headersTimeoutMs: seconds('HTTP_HEADERS_TIMEOUT_SECONDS', 15, 1, 600),
    requestTimeoutMs: seconds('HTTP_REQUEST_TIMEOUT_SECONDS', 30, 1, 3600),
    keepAliveTimeoutMs: seconds('HTTP_KEEP_ALIVE_TIMEOUT_SECONDS', 5, 1, 600),
    shutdownDelayMs: seconds('SHUTDOWN_DELAY_SECONDS', 0, 0, 300),
    shutdownGraceMs: seconds('SHUTDOWN_GRACE_SECONDS', 10, 0, 3600),
  };
  // Node refuses a headers timeout longer than the whole request's.
  if (http.headersTimeoutMs > http.requestTimeoutMs) {
    r.problems.push('HTTP_HEADERS_TIMEOUT_SECONDS: must not be greater than HTTP_REQUEST_TIMEOUT_SECONDS');
  }
  return http;
}

const LOCALHOST = new Set(['localhost', '127.0.0.1', '[::1]']);

function readIssuer(r: Reader, port: number, isProduction: boolean): string {
  const value = r.string('ISSUER', `http://localhost:${port}`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    r.problems.push(`ISSUER: expected an absolute URL, got "${value}"`);
    return value;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    r.problems.push(`ISSUER: expected an http(s) URL, got "${value}"`);
  } else if (url.search || url.hash || value.endsWith('/')) {
    r.problems.push(`ISSUER: must have no query, fragment or trailing slash, got "${value}"`);
  } else if (url.pathname !== '/') {
    // Every endpoint and page is served from the root of the host.
    r.problems.push(`ISSUER: must not have a path (serve the provider at the root of a host), got "${value}"`);
  } else if (isProduction && url.protocol === 'http:' && !LOCALHOST.has(url.hostname)) {
    r.problems.push('ISSUER: must use https in production (http is allowed only for localhost)');
  }
  return value;
}

function readCookieKeys(r: Reader, isProduction: boolean): string[] | undefined {
  const value = r.raw('COOKIE_KEYS');
  if (value === undefined) {
    if (isProduction) r.problems.push('COOKIE_KEYS: required in production (comma-separated random strings, 32+ characters each)');
    return undefined;
  }
  const keys = value.split(',').map((k) => k.trim()).filter(Boolean);
  if (keys.length === 0 || keys.some((k) => k.length < 32)) {
    r.problems.push('COOKIE_KEYS: every key must be at least 32 characters (comma-separated, newest first)');
  }
  return keys;
}

function readJwks(r: Reader): Config['jwks'] {
  const value = r.raw('OIDC_JWKS');
  if (value === undefined) return undefined;
  try {
    const parsed = JSON.parse(value) as { keys?: unknown };
    const keys = parsed.keys;
    if (!Array.isArray(keys) || keys.length === 0 || keys.some((k) => typeof k !== 'object' || k === null || !('d' in k))) {
      throw new Error();
    }
    // ES256 is the default signing algorithm for clients (see src/oidc/provider.ts).
    if (!keys.some((k: Record<string, unknown>) => k.kty === 'EC' && k.crv === 'P-256')) throw new Error();
    return { keys: keys as Record<string, unknown>[] };
  } catch {
    r.problems.push('OIDC_JWKS: expected a JSON object {"keys":[...]} of private JWKs (each with "d"), including an EC P-256 key for ES256');
    return undefined;
  }
}

function readMetrics(r: Reader, isProduction: boolean, mainPort: number): Config['metrics'] {
  const port = r.raw('METRICS_PORT') === undefined ? undefined : r.int('METRICS_PORT', 0, 1, 65535);
  if (port !== undefined && port === mainPort) r.problems.push('METRICS_PORT: must differ from PORT');
  const token = r.raw('METRICS_TOKEN');
  // A secret a scraper sends with every request: long enough not to be guessed.
  if (token !== undefined && token.length < 32) r.problems.push('METRICS_TOKEN: expected at least 32 characters');
  return { port, token, onMainPort: port === undefined && (token !== undefined || !isProduction) };
}

function readSecretsKeys(r: Reader, isProduction: boolean): Config['secretsKeys'] {
  const value = r.raw('SECRETS_KEY');
  if (value === undefined) {
    if (isProduction) r.problems.push('SECRETS_KEY: required in production ("id:key", the key 32 random bytes in base64; newest first, comma-separated)');
    return undefined;
  }
  const keys = value.split(',').map((entry) => {
    const match = /^([\w-]{1,32}):([A-Za-z0-9+/_-]{43}={0,1})$/.exec(entry.trim());
    const key = match ? Buffer.from(match[2]!.replace(/=$/, ''), 'base64url') : undefined;
    return match && key?.length === 32 ? { id: match[1]!, key } : undefined;
  });
  const ids = keys.map((k) => k?.id);
  if (keys.some((k) => k === undefined) || new Set(ids).size !== ids.length) {
    // Never echo the value: it is the key.
    r.problems.push('SECRETS_KEY: expected comma-separated "id:key" entries with distinct ids, each key 32 random bytes in base64 (openssl rand -base64 32)');
    return undefined;
  }
  return keys as SecretsKey[];
}

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
