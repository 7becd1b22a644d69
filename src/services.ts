/**
 * Opens everything the server and the CLI scripts share: MongoDB (and the adapter's indexes),
 * Redis when configured, signing keys, accounts, the Provider and the client registry.
 * Indexes are created here, once per start, never in constructors or per request.
 */
import { randomBytes } from 'node:crypto';
import mongoose, { type Connection } from 'mongoose';
import { Redis } from 'ioredis';
import { ArtifactStore } from '../adapters/mongodb.ts';
import { PasswordHasher } from './accounts/password.ts';
import { AccountService } from './accounts/service.ts';
import type { Config } from './config.ts';
import { ensureDevMongo } from './local/services.ts';
import type { Logger } from './observability/logger.ts';
import { ClientService } from './oidc/clients.ts';
import { loadSigningKeys } from './oidc/keys.ts';
import { createProvider } from './oidc/provider.ts';
import type { Provider } from 'oidc-provider';

export interface Services {
  readonly config: Config;
  readonly logger: Logger;
  readonly connection: Connection;
  readonly redis: Redis | undefined;
  readonly store: ArtifactStore;
  readonly accounts: AccountService;
  readonly provider: Provider;
  readonly clients: ClientService;
  /** Keys for signed cookies, newest first (shared with oidc-provider). */
  readonly cookieKeys: readonly string[];
  /** Closes connections and timers; safe to call once. */
  close(): Promise<void>;
}

async function connectMongo(config: Config, logger: Logger): Promise<Connection> {
  const uri = config.mongodbUri ?? (await ensureDevMongo(config.dataDir, (m) => logger.info(m)));
  // Filters built from user input never carry query operators, even if validation missed one.
  mongoose.set('sanitizeFilter', true);
  return mongoose.createConnection(uri, { autoIndex: false, serverSelectionTimeoutMS: 10_000 }).asPromise();
}

async function connectRedis(config: Config, logger: Logger): Promise<Redis | undefined> {
  if (!config.redisUrl) {
    logger.warn('REDIS_URL is not set: running without Redis (development only)');
    return undefined;
  }
  const redis = new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
  redis.on('error', (error: Error) => logger.warn({ err: { message: error.message } }, 'redis error'));
  await redis.connect();
  return redis;
}

export async function openServices(config: Config, logger: Logger): Promise<Services> {
  const connection = await connectMongo(config, logger);
  let redis: Redis | undefined;
  let stopSweeper = () => {};
  try {
    redis = await connectRedis(config, logger);
    const store = new ArtifactStore(connection, { clientCacheSeconds: config.clientCacheSeconds });
    await store.ensureIndexes();
    stopSweeper = store.startSweeper(config.sweepIntervalSeconds, (error) =>
      logger.error({ err: error }, 'sweeping expired artifacts failed'));
    if (!store.ttlIndexes) logger.info('database has no TTL indexes: expired artifacts are swept periodically');

    const accounts = new AccountService(connection, new PasswordHasher(config.argon2));
    await accounts.ensureIndexes();

    const jwks = await loadSigningKeys(connection, { supplied: config.jwks, mayGenerate: !config.isProduction });
    let cookieKeys = config.cookieKeys;
    if (!cookieKeys) {
      logger.warn('COOKIE_KEYS is not set: using a random key, so sessions end when this process stops');
      cookieKeys = [randomBytes(32).toString('base64url')];
    }
    const provider = createProvider({ config, store, accounts, jwks, cookieKeys, logger });
    const clients = new ClientService(store, provider);

    let closed = false;
    return {
      config, logger, connection, redis, store, accounts, provider, clients, cookieKeys,
      async close() {
        if (closed) return;
        closed = true;
        stopSweeper();
        await Promise.allSettled([connection.close(), redis?.quit()]);
      },
    };
  } catch (error) {
    stopSweeper();
    await Promise.allSettled([connection.close(), redis?.quit()]);
    throw error;
  }
}
