/**
 * Starts the real services the suites need, once per `npm test`: a MongoDB-compatible server
 * (mongod on PATH, else FerretDB) and redis-server, on free loopback ports in a throwaway
 * directory. MONGODB_URI / REDIS_URL, when given, are used instead. Workers inherit the
 * addresses through TEST_MONGODB_URI / TEST_REDIS_URL; global-teardown stops what was started.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureChromium, startEphemeralMongo, startEphemeralRedis, type LocalService } from '../../src/local/services.ts';

declare global {
  var __testServices: { dir: string; started: LocalService[] } | undefined;
}

const say = (message: string) => process.stderr.write(`[test setup] ${message}\n`);

export default async function globalSetup(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-idp-test-'));
  const started: LocalService[] = [];
  globalThis.__testServices = { dir, started };

  try {
    if (process.env.MONGODB_URI) {
      process.env.TEST_MONGODB_URI = process.env.MONGODB_URI;
    } else {
      const mongo = await startEphemeralMongo(path.join(dir, 'mongo'), say);
      started.push(mongo);
      process.env.TEST_MONGODB_URI = mongo.uri;
      say(`using ${mongo.kind} at ${mongo.uri}`);
    }
    // The browser suites drive a real Chromium (playwright-core brings no browser of its own).
    const chromium = process.env.CHROMIUM_PATH ?? ensureChromium(say);
    if (chromium) process.env.TEST_CHROMIUM_PATH = chromium;
    if (process.env.REDIS_URL) {
      process.env.TEST_REDIS_URL = process.env.REDIS_URL;
    } else {
      const redis = await startEphemeralRedis(path.join(dir, 'redis'), say);
      started.push(redis);
      process.env.TEST_REDIS_URL = redis.uri;
    }
  } catch (error) {
    // jest skips globalTeardown when globalSetup fails: clean up here.
    await Promise.allSettled(started.map((service) => service.stop()));
    fs.rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}
