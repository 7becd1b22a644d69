/** Starts the real app (real Koa, MongoDB, Redis) on a free loopback port for one suite. */
import { loadConfig } from '../../src/config.ts';
import { freePort } from '../../src/local/services.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { startServer, type RunningServer } from '../../src/server.ts';
import { testMongoUri, testRedisUrl } from './env.ts';

const RELAXED_PROTECTION: Record<string, string> = {
  ...Object.fromEntries(['SIGNIN_ATTEMPTS_PER_IP', 'SIGNIN_PER_IP', 'SIGNIN_PER_ACCOUNT', 'MFA_PER_ACCOUNT', 'REGISTER_PER_IP', 'REGISTER_PER_EMAIL',
    'RESET_PER_IP', 'RESET_PER_EMAIL', 'VERIFY_PER_IP', 'VERIFY_PER_EMAIL', 'TOKEN_PER_CLIENT'].map((name) => [`RATE_LIMIT_${name}`, '100000/60'])),
  LOCKOUT_THRESHOLD: '100',
};

export interface TestServer extends RunningServer {
  readonly issuer: string;
}

export async function startTestServer(env: Record<string, string> = {}, options: { monitorCommands?: boolean } = {}): Promise<TestServer> {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const config = loadConfig({
    NODE_ENV: 'test',
    ISSUER: issuer,
    HOST: '127.0.0.1',
    PORT: String(port),
    MONGODB_URI: testMongoUri('e2e'),
    REDIS_URL: testRedisUrl(),
    COOKIE_KEYS: 'test-cookie-key-0123456789abcdefghijklmnop',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    // Suites sign in many times from one address; the protection suite sets its own limits.
    ...RELAXED_PROTECTION,
    ...env,
  });
  const running = await startServer(config, createLogger(config.logLevel), options);
  const close = running.close.bind(running);
  // Each suite has a database of its own; drop it so a shared server (MONGODB_URI) stays clean.
  return Object.assign(running, {
    issuer,
    async close() {
      await running.services.connection.dropDatabase();
      await close();
    },
  });
}
