/**
 * loadConfig is pure: it reads only the object it is given, so these are plain unit tests. The
 * last test checks the real entry point exits with a message naming the bad variable.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, loadConfig } from '../src/config.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const COOKIE_KEY = 'k'.repeat(32);
const PRIVATE_JWKS = JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'd' }] });
const PRODUCTION = {
  NODE_ENV: 'production',
  ISSUER: 'https://id.example.com',
  MONGODB_URI: 'mongodb://db.internal:27017/idp',
  REDIS_URL: 'rediss://cache.internal:6380',
  SMTP_URL: 'smtps://mailer:secret@smtp.internal:465',
  COOKIE_KEYS: `${COOKIE_KEY},${'o'.repeat(40)}`,
  TRUST_PROXY: 'true',
  SECRETS_KEY: `k1:${Buffer.alloc(32, 7).toString('base64')}`,
};

/** The ConfigError thrown by loadConfig(env); fails the test when nothing (or something else) is thrown. */
function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

function problemsFor(env: Record<string, string>, variable: string): string[] {
  return configError(env).problems.filter((p) => p.startsWith(`${variable}:`));
}

describe('defaults', () => {
  test('an empty environment gives a development config on localhost:3000', () => {
    const config = loadConfig({});
    expect(config.nodeEnv).toBe('development');
    expect(config.isProduction).toBe(false);
    expect(config.issuer).toBe('http://localhost:3000');
    expect(config.port).toBe(3000);
    expect(config.host).toBe('127.0.0.1');
    expect(config.trustProxy).toBe(false);
    expect(config.logLevel).toBe('info');
    expect(config.mongodbUri).toBeUndefined();
    expect(config.redisUrl).toBeUndefined();
    expect(config.cookieKeys).toBeUndefined();
    expect(config.jwks).toBeUndefined();
    expect(config.ttl.authorizationCode).toBe(60);
    expect(config.argon2).toEqual({ memoryKiB: 19456, timeCost: 2, parallelism: 1 });
    expect(Object.isFrozen(config)).toBe(true);
  });

  test('the default issuer follows PORT, and blank values count as unset', () => {
    expect(loadConfig({ PORT: '4000' }).issuer).toBe('http://localhost:4000');
    expect(loadConfig({ PORT: '  ', LOG_LEVEL: '' }).port).toBe(3000);
  });

  test('well-formed values are parsed', () => {
    const config = loadConfig({
      PORT: '8080', TRUST_PROXY: 'yes', LOG_LEVEL: 'debug', OIDC_JWKS: PRIVATE_JWKS,
      COOKIE_KEYS: ` ${COOKIE_KEY} , ${'n'.repeat(33)} `, TTL_AUTHORIZATION_CODE: '30', ARGON2_MEMORY_KIB: '65536',
    });
    expect(config).toMatchObject({ port: 8080, trustProxy: true, logLevel: 'debug', argon2: { memoryKiB: 65536 } });
    expect(config.cookieKeys).toEqual([COOKIE_KEY, 'n'.repeat(33)]);
    expect(config.jwks?.keys).toHaveLength(1);
    expect(config.ttl.authorizationCode).toBe(30);
  });
});

describe('documents API settings', () => {
  test('default to the issuer: audience <issuer>/api, keys from the issuer JWKS, 10 MiB, no CORS', () => {
    const config = loadConfig({ ISSUER: 'http://localhost:4000', PORT: '4000' });
    expect(config.documents).toMatchObject({
      audience: 'http://localhost:4000/api', jwksUri: 'http://localhost:4000/jwks', maxFileBytes: 10 * 1024 * 1024, corsOrigins: [],
    });
    expect(config.documents.fileTypes).toContain('application/pdf');
    expect(config.documents.fileTypes).not.toContain('text/html');
  });

  test('explicit values are parsed', () => {
    const config = loadConfig({
      DOCUMENTS_API_AUDIENCE: 'https://docs.example.com', DOCUMENTS_API_JWKS_URI: 'http://127.0.0.1:3000/jwks',
      DOCUMENTS_MAX_FILE_BYTES: '1024', DOCUMENTS_FILE_TYPES: 'Image/PNG, text/plain',
      DOCUMENTS_API_CORS_ORIGINS: 'https://app.example.com, http://localhost:5173',
    });
    expect(config.documents).toEqual({
      audience: 'https://docs.example.com', jwksUri: 'http://127.0.0.1:3000/jwks', maxFileBytes: 1024,
      fileTypes: ['image/png', 'text/plain'], corsOrigins: ['https://app.example.com', 'http://localhost:5173'],
    });
  });
});

describe('malformed values', () => {
  test.each<[string, string]>([
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['TRUST_PROXY', 'maybe'],
    ['LOG_LEVEL', 'loud'],
    ['ISSUER', 'https://id.example.com/'],
    ['ISSUER', 'not a url'],
    ['ISSUER', 'https://example.com/idp'],
    ['MONGODB_URI', 'http://x'],
    ['COOKIE_KEYS', `${COOKIE_KEY},short`],
    ['OIDC_JWKS', '{not json'],
    ['OIDC_JWKS', JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'x', y: 'y' }] })],
    ['OIDC_JWKS', JSON.stringify({ keys: [{ kty: 'RSA', n: 'n', e: 'AQAB', d: 'd' }] })],
    ['TTL_AUTHORIZATION_CODE', '120'],
    ['ARGON2_MEMORY_KIB', '1024'],
    ['DOCUMENTS_API_AUDIENCE', 'documents'],
    ['DOCUMENTS_API_AUDIENCE', 'https://api.example.com/#x'],
    ['DOCUMENTS_API_JWKS_URI', 'ftp://keys'],
    ['DOCUMENTS_MAX_FILE_BYTES', '0'],
    ['DOCUMENTS_FILE_TYPES', 'application/pdf,not a type'],
    ['DOCUMENTS_API_CORS_ORIGINS', 'https://app.example.com/path'],
    ['DOCUMENTS_API_CORS_ORIGINS', '*'],
    ['RATE_LIMIT_SIGNIN_PER_IP', '30'],
    ['RATE_LIMIT_TOKEN_PER_CLIENT', '0/60'],
    ['SMTP_URL', 'http://mail'],
    ['PASSWORD_MIN_LENGTH', '6'],
    ['LOCKOUT_THRESHOLD', '1'],
    ['KEY_ROTATION_DAYS', '0'],
    ['KEYS_REFRESH_SECONDS', 'soon'],
    ['JWKS_CACHE_SECONDS', '0'],
    ['SECRETS_KEY', 'k1:short'],
    ['SECRETS_KEY', `${Buffer.alloc(32).toString('base64')}`],
    ['SECRETS_KEY', `a:${Buffer.alloc(32).toString('base64')},a:${Buffer.alloc(32, 1).toString('base64')}`],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'collector:4318'],
    ['CLIENT_REGISTRATION_ENABLED', 'maybe'],
  ])('%s=%s is reported on one line naming the variable', (variable, value) => {
    const error = configError({ [variable]: value });
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]!.startsWith(`${variable}: `)).toBe(true);
    expect(error.message).toContain(error.problems[0]);
  });

  test('several bad variables are all reported at once', () => {
    const error = configError({ PORT: 'abc', TRUST_PROXY: 'maybe', LOG_LEVEL: 'loud', TTL_AUTHORIZATION_CODE: '120' });
    expect(error.problems.map((p) => p.split(':')[0])).toEqual(
      expect.arrayContaining(['PORT', 'TRUST_PROXY', 'LOG_LEVEL', 'TTL_AUTHORIZATION_CODE']),
    );
    expect(error.problems).toHaveLength(4);
  });

  test('a connection string is never echoed back', () => {
    const error = configError({ MONGODB_URI: 'http://user:s3cret@host', REDIS_URL: 'http://u:hunter2@cache' });
    expect(problemsFor({ MONGODB_URI: 'http://user:s3cret@host' }, 'MONGODB_URI')).toHaveLength(1);
    expect(error.message).not.toContain('s3cret');
    expect(error.message).not.toContain('hunter2');
    expect(error.problems.join('\n')).not.toContain('s3cret');
  });
});

describe('keys and secrets', () => {
  test('SECRETS_KEY takes id:key entries, newest first, in base64 or base64url; the value is never echoed', () => {
    const a = Buffer.alloc(32, 0xfb);
    const config = loadConfig({ SECRETS_KEY: `new:${a.toString('base64url')}, old-1:${a.toString('base64')}` });
    expect(config.secretsKeys?.map((k) => k.id)).toEqual(['new', 'old-1']);
    expect(config.secretsKeys?.every((k) => k.key.equals(a))).toBe(true);
    const bad = `k1:${'A'.repeat(40)}`;
    expect(configError({ SECRETS_KEY: bad }).message).not.toContain(bad);
  });

  test('rotation is off unless KEY_ROTATION_DAYS is set; keys are re-read every minute and the JWKS cached 5 minutes', () => {
    expect(loadConfig({}).keys).toEqual({ rotationDays: undefined, refreshSeconds: 60, jwksCacheSeconds: 300 });
    expect(loadConfig({ KEY_ROTATION_DAYS: '30' }).keys.rotationDays).toBe(30);
    expect(loadConfig({}).tracing).toEqual({ endpoint: undefined, serviceName: 'oidc-idp' });
    expect(loadConfig({}).clientRegistration.enabled).toBe(false);
  });
});

describe('production', () => {
  test('a complete https configuration is accepted', () => {
    const config = loadConfig(PRODUCTION);
    expect(config).toMatchObject({
      nodeEnv: 'production', isProduction: true, issuer: 'https://id.example.com', host: '0.0.0.0',
      mongodbUri: PRODUCTION.MONGODB_URI, redisUrl: PRODUCTION.REDIS_URL,
    });
    expect(config.cookieKeys).toHaveLength(2);
    expect(config.secureTransport).toBe(true);
  });

  test('an https issuer needs TRUST_PROXY, since TLS ends at a proxy', () => {
    const { TRUST_PROXY: _trusted, ...env } = PRODUCTION;
    const error = configError(env);
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]).toMatch(/^TRUST_PROXY: /);
  });

  test.each(['COOKIE_KEYS', 'MONGODB_URI', 'REDIS_URL', 'SMTP_URL', 'SECRETS_KEY'])('refuses to start without %s', (variable) => {
    const env: Record<string, string> = { ...PRODUCTION };
    delete env[variable];
    const error = configError(env);
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]).toMatch(new RegExp(`^${variable}: required in production`));
  });

  test('refuses an http issuer other than localhost', () => {
    expect(problemsFor({ ...PRODUCTION, ISSUER: 'http://id.example.com' }, 'ISSUER')).toHaveLength(1);
    expect(loadConfig({ ...PRODUCTION, ISSUER: 'http://localhost:3000' }).issuer).toBe('http://localhost:3000');
    expect(loadConfig({ ...PRODUCTION, ISSUER: 'http://localhost' }).issuer).toBe('http://localhost');
  });

  test('the same http issuer is fine outside production', () => {
    expect(loadConfig({ ISSUER: 'http://id.example.com' }).issuer).toBe('http://id.example.com');
  });
});

test('the server exits with a message naming the bad variable', () => {
  const result = spawnSync('node', ['src/server.ts'], {
    cwd: ROOT,
    env: { ...process.env, NODE_ENV: 'production', PORT: 'abc' },
    encoding: 'utf8',
    timeout: 20_000,
  });
  expect(result.error).toBeUndefined();
  expect(result.signal).toBeNull();
  expect(result.status).not.toBe(0);
  expect(result.stderr).toContain('PORT:');
});

test('.env.example documents every variable the configuration reads, and the README table lists it', () => {
  const root = path.resolve(import.meta.dirname, '..');
  const source = ['src/config.ts', 'src/config-sections.ts'].map((file) => fs.readFileSync(path.join(root, file), 'utf8')).join('\n');
  const names = [...new Set([...source.matchAll(/'([A-Z][A-Z0-9_]{2,})'/g)].map((m) => m[1]!))];
  expect(names.length).toBeGreaterThan(25);
  const example = fs.readFileSync(path.join(root, '.env.example'), 'utf8');
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  expect(names.filter((name) => !new RegExp(`^#? ?${name}=`, 'm').test(example))).toEqual([]);
  expect(names.filter((name) => !readme.includes(`\`${name}\``))).toEqual([]);
});

describe('metrics', () => {
  const token = 't'.repeat(32);
  test('served openly outside production, in production only with METRICS_PORT or METRICS_TOKEN', () => {
    expect(loadConfig({}).metrics).toEqual({ port: undefined, token: undefined, onMainPort: true });
    expect(loadConfig(PRODUCTION).metrics).toEqual({ port: undefined, token: undefined, onMainPort: false });
    expect(loadConfig({ ...PRODUCTION, METRICS_TOKEN: token }).metrics).toEqual({ port: undefined, token, onMainPort: true });
    expect(loadConfig({ ...PRODUCTION, METRICS_PORT: '9464' }).metrics).toEqual({ port: 9464, token: undefined, onMainPort: false });
  });

  test('a short token, a bad port or the main port are refused, naming the variable', () => {
    expect(problemsFor({ METRICS_TOKEN: 'short' }, 'METRICS_TOKEN')).toHaveLength(1);
    expect(problemsFor({ METRICS_PORT: 'x' }, 'METRICS_PORT')).toHaveLength(1);
    expect(problemsFor({ PORT: '4000', METRICS_PORT: '4000' }, 'METRICS_PORT')).toHaveLength(1);
  });
});
