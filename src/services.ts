/**
 * Opens everything the server and the CLI scripts share: MongoDB (and the adapter's indexes),
 * Redis when configured, signing keys, accounts, the Provider and the client registry.
 * Indexes are created here, once per start, never in constructors or per request.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout } from 'node:timers/promises';
import mongoose, { type Connection } from 'mongoose';
import { Redis } from 'ioredis';
import { ArtifactStore } from '../adapters/mongodb.ts';
import { PasswordHasher } from './accounts/password.ts';
import { MfaService } from './accounts/mfa.ts';
import { AccountService } from './accounts/service.ts';
import type { Config } from './config.ts';
import { AuditLog } from './audit/log.ts';
import { DocumentService } from './documents/service.ts';
import { AccessTokenVerifier } from './documents/token.ts';
import { ensureDevMongo } from './local/services.ts';
import { createMailer, type Mailer } from './mail/mailer.ts';
import type { Logger } from './observability/logger.ts';
import { ClientService } from './oidc/clients.ts';
import { loadSigningKeys } from './oidc/keys.ts';
import { TokenRevocations } from './oidc/revocations.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID, createProvider } from './oidc/provider.ts';
import { AccountTokens } from './accounts/tokens.ts';
import { MfaChallenges } from './interactions/mfa-challenges.ts';
import { Lockout } from './security/lockout.ts';
import { LimiterStore, RateLimits } from './security/rate-limit.ts';
import type { Provider } from 'oidc-provider';

export interface Services {
  readonly config: Config;
  readonly logger: Logger;
  readonly connection: Connection;
  readonly redis: Redis | undefined;
  readonly store: ArtifactStore;
  readonly accounts: AccountService;
  /** TOTP second factor and recovery codes. */
  readonly mfa: MfaService;
  readonly provider: Provider;
  readonly clients: ClientService;
  readonly documents: DocumentService;
  readonly audit: AuditLog;
  /** Verifies the documents API's access tokens (keys cached from the provider's JWKS). */
  readonly tokenVerifier: AccessTokenVerifier;
  readonly revocations: TokenRevocations;
  /** Shared through Redis; per instance, in memory, while Redis is away. */
  readonly rateLimits: RateLimits;
  readonly lockout: Lockout;
  /** Account e-mail: SMTP, or .eml files in the outbox without SMTP_URL (development only). */
  readonly mailer: Mailer;
  /** Single-use mailed links (email verification, password reset). */
  readonly accountTokens: AccountTokens;
  /** Sign-ins waiting for their second step. */
  readonly mfaChallenges: MfaChallenges;
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

/**
 * Redis is not allowed to stop the provider: it connects (and reconnects) in the background, and
 * commands fail fast while it is away instead of queueing, so callers can fall back.
 */
function connectRedis(config: Config, logger: Logger): Redis | undefined {
  if (!config.redisUrl) {
    logger.warn('REDIS_URL is not set: running without Redis (development only)');
    return undefined;
  }
  // commandTimeout: a Redis that accepts connections but does not answer must not hold requests;
  // the rate limits then fall back to memory like for a Redis that is down.
  const redis = new Redis(config.redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 500 });
  let reported = false;
  redis.on('error', (error: Error) => {
    if (!reported) logger.warn({ err: { message: error.message } }, 'redis unavailable; retrying in the background');
    reported = true;
  });
  redis.on('ready', () => {
    if (reported) logger.info('redis connection restored');
    reported = false;
  });
  return redis;
}

export async function openServices(config: Config, logger: Logger): Promise<Services> {
  // First: a missing mail view stops start-up before anything is connected.
  const mailer = createMailer(config, logger);
  const connection = await connectMongo(config, logger);
  let redis: Redis | undefined;
  let stopSweeper = () => {};
  let stopRevocations = () => {};
  let stopAuditRetention = () => {};
  let stopMaintenance = () => {};
  try {
    redis = connectRedis(config, logger);
    // Give Redis a moment so a healthy start begins connected, but never wait on it for long.
    if (redis) await Promise.race([new Promise((resolve) => redis!.once('ready', resolve)), setTimeout(2000, undefined, { ref: false })]);
    const store = new ArtifactStore(connection, { clientCacheSeconds: config.clientCacheSeconds });
    await store.ensureIndexes();
    stopSweeper = store.startSweeper(config.sweepIntervalSeconds, (error) =>
      logger.error({ err: error }, 'sweeping expired artifacts failed'));
    if (!store.ttlIndexes) logger.info('database has no TTL indexes: expired artifacts are swept periodically');

    // Records must outlive every JWT they revoke, whichever grant issued it.
    const revocations = new TokenRevocations(connection, Math.max(config.ttl.accessToken, config.ttl.clientCredentials), logger);
    await revocations.ensureIndexes();
    stopRevocations = await revocations.start(config.revocationRefreshSeconds);
    const accounts = new AccountService(connection, new PasswordHasher(config.argon2), async (id) => {
      await Promise.all([store.revokeAccount(id), revocations.revoke('account', id)]);
    });
    await accounts.ensureIndexes();
    const accountTokens = new AccountTokens(connection);
    await accountTokens.ensureIndexes();
    const mfaChallenges = new MfaChallenges(connection);
    await mfaChallenges.ensureIndexes();
    const maintenance = setInterval(() => {
      Promise.all([accountTokens.sweep(), mfaChallenges.sweep(), mfa.sweep()])
        .catch((error: unknown) => logger.error({ err: error }, 'sweeping expired account tokens failed'));
    }, 10 * 60_000);
    maintenance.unref();
    stopMaintenance = () => clearInterval(maintenance);
    const mfa = new MfaService(connection, accounts, { issuer: new URL(config.issuer).hostname });
    await mfa.ensureIndexes();
    const audit = new AuditLog(connection, logger);
    await audit.ensureIndexes(config.auditRetentionDays);
    stopAuditRetention = audit.startRetention();
    const documents = new DocumentService(connection, accounts, logger);
    await documents.ensureIndexes();
    // Shares waiting for an address go to an account only once it has proven that address.
    accounts.onEmailVerified(async (account) => {
      // The account exists either way; a share that fails to resolve now is logged, not fatal.
      await documents.claimPendingShares(account.email, account.id)
        .catch((error: unknown) => logger.error({ err: error, accountId: account.id }, 'resolving pending document shares failed'));
    });
    const tokenVerifier = new AccessTokenVerifier({
      issuer: config.issuer, audience: config.documents.audience, jwksUri: config.documents.jwksUri, revocations, logger,
    });

    const jwks = await loadSigningKeys(connection, { supplied: config.jwks, mayGenerate: !config.isProduction });
    let cookieKeys = config.cookieKeys;
    if (!cookieKeys) {
      logger.warn('COOKIE_KEYS is not set: using a random key, so sessions end when this process stops');
      cookieKeys = [randomBytes(32).toString('base64url')];
    }
    const provider = createProvider({ config, store, accounts, jwks, cookieKeys, logger });
    const clients = new ClientService(store, provider, revocations);
    await clients.ensure(ACCOUNT_CONSOLE_CLIENT_ID, {
      name: 'Your account', isPublic: true, grantTypes: ['authorization_code'], scope: 'openid',
      redirectUris: [`${config.issuer}/account/callback`],
    });
    const limiters = new LimiterStore(redis, logger);
    const rateLimits = new RateLimits(config.rateLimits, limiters);
    const lockout = new Lockout(config.lockout, limiters);

    let closed = false;
    return {
      config, logger, connection, redis, store, accounts, mfa, provider, clients, documents, audit, tokenVerifier, revocations, cookieKeys,
      rateLimits, lockout, mailer, accountTokens, mfaChallenges,
      async close() {
        if (closed) return;
        closed = true;
        stopSweeper();
        stopRevocations();
        stopAuditRetention();
        stopMaintenance();
        await Promise.allSettled([connection.close(), redis?.disconnect()]);
      },
    };
  } catch (error) {
    stopSweeper();
    stopRevocations();
    stopAuditRetention();
    stopMaintenance();
    await Promise.allSettled([connection.close(), redis?.disconnect()]);
    throw error;
  }
}
