/** Addresses of the services started by global-setup, and a fresh database per caller. */
import { randomBytes } from 'node:crypto';

export function testMongoUri(prefix = 'test'): string {
  const base = process.env.TEST_MONGODB_URI;
  if (!base) throw new Error('TEST_MONGODB_URI is not set: run the suites through `npm test`');
  const url = new URL(base);
  url.pathname = `/${prefix}_${randomBytes(6).toString('hex')}`;
  return url.toString();
}

export function testRedisUrl(): string {
  const url = process.env.TEST_REDIS_URL;
  if (!url) throw new Error('TEST_REDIS_URL is not set: run the suites through `npm test`');
  return url;
}
