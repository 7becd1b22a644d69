/**
 * The sections of the configuration that take more than one line to read and check, each
 * reporting its problems under the variable's name (src/config.ts puts them together). Values
 * imported from config.ts are only read when a section is read, after both modules have loaded.
 */
import type { Reader } from './config-reader.ts';
import { DEFAULT_FILE_TYPES, RATE_LIMIT_NAMES, type Config, type Limit, type RateLimitName, type SecretsKey } from './config.ts';

const MEDIA_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/;

function readList(r: Reader, name: string): string[] | undefined {
  const value = r.raw(name);
  return value === undefined ? undefined : value.split(',').map((item) => item.trim()).filter(Boolean);
}

export function readDocuments(r: Reader, issuer: string, isProduction: boolean): Config['documents'] {
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

export function readRateLimits(r: Reader): Config['rateLimits'] {
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

export function readHttp(r: Reader): Config['http'] {
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

export function readIssuer(r: Reader, port: number, isProduction: boolean): string {
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

export function readCookieKeys(r: Reader, isProduction: boolean): string[] | undefined {
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

export function readJwks(r: Reader): Config['jwks'] {
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

export function readMetrics(r: Reader, isProduction: boolean, mainPort: number): Config['metrics'] {
  const port = r.raw('METRICS_PORT') === undefined ? undefined : r.int('METRICS_PORT', 0, 1, 65535);
  if (port !== undefined && port === mainPort) r.problems.push('METRICS_PORT: must differ from PORT');
  const token = r.raw('METRICS_TOKEN');
  // A secret a scraper sends with every request: long enough not to be guessed.
  if (token !== undefined && token.length < 32) r.problems.push('METRICS_TOKEN: expected at least 32 characters');
  return { port, token, onMainPort: port === undefined && (token !== undefined || !isProduction) };
}

export function readSecretsKeys(r: Reader, isProduction: boolean): Config['secretsKeys'] {
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
