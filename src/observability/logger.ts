import { pino, type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from '../config.ts';

export type { Logger };

/**
 * Keys whose values are credentials, or carry them, wherever they appear (compared without case).
 * Bodies and queries are on the list whole: a body parser's error keeps the raw body (co-body sets
 * err.body), and a form or query holds passwords, codes and tokens under names no list foresees.
 */
const SECRET_KEYS = [
  'password', 'current', 'newPassword', 'new_password', 'passwordHash', 'secret', 'client_secret', 'clientSecret',
  'token', 'access_token', 'refresh_token', 'id_token', 'accessToken', 'refreshToken', 'idToken', 'logout_token',
  'code_verifier', 'client_assertion', 'assertion', 'authorization_code', 'user_code', 'device_code',
  'otp', 'totp', 'recoveryCodes', 'recovery_codes', 'recoveryCode', '_csrf', 'csrfToken',
  'authorization', 'proxy-authorization', 'cookie', 'cookies', 'set-cookie', 'x-api-key',
  'cookieKeys', 'keys', 'jwks', 'privateKey', 'mongodbUri', 'redisUrl', 'smtpUrl',
  'body', 'rawBody', 'query', 'querystring',
];
const SECRET = new Set(SECRET_KEYS.map((key) => key.toLowerCase()));
/** OAuth's `code` parameter shares its name with error codes, which logs keep: hidden only inside these. */
const PARAMETER_HOLDERS = new Set(['params', 'form', 'fields', 'input', 'payload', 'oidc']);
/** Request URLs keep their path; the query (authorization codes, state, mailed tokens) is hidden. */
const URL_KEYS = new Set(['url', 'originalurl', 'href']);
const CENSOR = '[redacted]';

/**
 * pino's own redaction, for where the logger meets request data, and for child bindings (which
 * formatters.log, so the scrub below, never sees). Literal paths only: every wildcard costs pino a
 * pass over every key of every line; the scrub covers other depths for a fraction of that.
 */
const KNOWN_HOLDERS = [
  '', 'err', 'error', 'err.cause', 'audit', 'headers', 'req', 'req.headers', 'res.headers', 'request', 'request.headers',
  'response.headers', 'err.request', 'err.request.headers', 'err.response.headers', 'err.config', 'err.config.headers',
];
const segment = (key: string) => (/^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `["${key}"]`);
export const REDACT_PATHS: readonly string[] = [
  ...KNOWN_HOLDERS.flatMap((holder) => SECRET_KEYS.map((key) => `${holder}${segment(key)}`.replace(/^\./, ''))),
  ...[...PARAMETER_HOLDERS].map((holder) => `${holder}.code`),
];

interface SafeError {
  type: string;
  message: string;
  stack?: string;
  code?: string | number;
  status?: number;
  cause?: SafeError;
  errors?: SafeError[];
}

/**
 * V8's JSON.parse quotes the text it failed on (`Unexpected token 'p', "password=..." is not
 * valid JSON`), and a body parser's text is the request body: keep the kind of error, not the input.
 */
function withoutInput(text: string): string {
  return text.replace(/, (?:\.\.\.)?"[\s\S]*?"(?:\.\.\.)? is not valid JSON/g, ' is not valid JSON (input not logged)');
}

/**
 * Only the fields that say what went wrong. pino's default error serializer writes every
 * enumerable property, and libraries hang request bodies, headers and whole requests on errors.
 */
function safeError(value: unknown, depth = 0): SafeError | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== 'object') return { type: typeof value, message: withoutInput(String(value)) };
  const error = value as Record<string, unknown>;
  const named = typeof error.type === 'string' ? error.type : typeof error.name === 'string' ? error.name : 'Object';
  const safe: SafeError = {
    type: value instanceof Error ? value.constructor.name : named,
    message: typeof error.message === 'string' ? withoutInput(error.message) : '',
  };
  if (typeof error.stack === 'string') safe.stack = withoutInput(error.stack);
  if (typeof error.code === 'string' || typeof error.code === 'number') safe.code = error.code;
  const status = typeof error.status === 'number' ? error.status : error.statusCode;
  if (typeof status === 'number') safe.status = status;
  if (depth < 5) {
    const cause = safeError(error.cause, depth + 1);
    if (cause) safe.cause = cause;
    if (Array.isArray(error.errors)) {
      safe.errors = error.errors.slice(0, 10).map((item) => safeError(item, depth + 1)).filter((item) => item !== undefined);
    }
  }
  return safe;
}

export const errorSerializer = (value: unknown): unknown => safeError(value);

const MAX_DEPTH = 8;
const MAX_NODES = 2000;

/**
 * A copy of what is about to be logged, as JSON.stringify would see it, with secrets censored at
 * any depth and every error (under any key) reduced to its safe fields.
 */
function scrub(value: unknown, key: string, parent: string, depth: number, budget: { nodes: number }): unknown {
  const lower = key.toLowerCase();
  if (SECRET.has(lower) || (lower === 'code' && PARAMETER_HOLDERS.has(parent.toLowerCase()))) return value === undefined ? value : CENSOR;
  if (typeof value === 'string') return URL_KEYS.has(lower) ? value.replace(/\?.*$/s, '?[redacted]') : value;
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof Error) return safeError(value);
  budget.nodes -= 1;
  if (depth >= MAX_DEPTH || budget.nodes < 0) return '[not logged: too deep]';
  const json = (value as { toJSON?: unknown }).toJSON;
  if (typeof json === 'function') return scrub(json.call(value, key), key, parent, depth + 1, budget);
  if (Array.isArray(value)) return value.map((item) => scrub(item, key, parent, depth + 1, budget));
  const copy: Record<string, unknown> = {};
  for (const [name, item] of Object.entries(value)) copy[name] = scrub(item, name, key, depth + 1, budget);
  return copy;
}

const scrubbed = (object: Record<string, unknown>) => scrub(object, '', '', 0, { nodes: MAX_NODES }) as Record<string, unknown>;

/**
 * JSON logs on stdout (stderr for CLI scripts, whose stdout is their JSON answer), or on the stream
 * given (tests read what was logged). Code never passes secrets to the logger; the error
 * serializer, the scrub and redaction are the safety net for what a stray object carries.
 */
export function createLogger(level: LogLevel, to: 1 | 2 | DestinationStream = 1): Logger {
  return pino({
    level,
    base: { service: 'oidc-idp' },
    // pino's err serializer runs after formatters.log, on what the scrub left: already safe.
    serializers: { err: errorSerializer },
    formatters: { log: scrubbed },
    hooks: {
      // The message too: `logger.error(error)` logs the error's message as the line's msg.
      logMethod(args, method) {
        const [first] = args;
        const message = args.length === 1 && first instanceof Error ? [first.message] : [];
        const cleaned = [...args, ...message].map((arg) => (typeof arg === 'string' ? withoutInput(arg) : arg));
        return method.apply(this, cleaned as Parameters<typeof method>);
      },
    },
    redact: { paths: [...REDACT_PATHS], censor: CENSOR },
  }, typeof to === 'number' ? pino.destination({ fd: to, sync: to === 2 }) : to);
}
