/**
 * The object graph, in two layers (the way Dex separates storage from server):
 * - openServices: what every process needs, the server and each CLI command alike: MongoDB (and
 *   the indexes, which keep data consistent whoever writes first), Redis when configured, the
 *   repositories and services. It starts nothing and writes no data: no timers, no built-in
 *   clients, no generated keys. Its Provider only reads and validates (client metadata).
 * - startServices: what only a serving process does on top: the signing keys of a fresh
 *   development database, the built-in account-console client, the audit retention index (its
 *   lifetime is the server's AUDIT_RETENTION_DAYS), sweepers and polling timers.
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
import { MAX_ACCESS_TOKEN_SECONDS, type Config } from './config.ts';
import { AuditLog } from './audit/log.ts';
import { DocumentService } from './documents/service.ts';
import { AccessTokenVerifier } from './documents/token.ts';
import { ensureDevMongo } from './local/services.ts';
import { createMailer, type MailOutbox } from './mail/mailer.ts';
import type { Logger } from './observability/logger.ts';
import { DatabaseHealth } from './observability/health.ts';
import { Metrics, oauthErrorLabel } from './observability/metrics.ts';
import { ClientService } from './oidc/clients.ts';
import { ClientRegistration, watchRegistrations } from './oidc/registration.ts';
import { DpopVerifier, SeenProofs } from './documents/dpop.ts';
import { LogoutDeliveries, type DeliveryOptions } from './logout/deliveries.ts';
import { propagateLogouts } from './logout/propagation.ts';
import { keyRingFor, throwawayJwks, type KeyRing, type PrivateJwks } from './oidc/keys.ts';
import { KeyRefresher } from './oidc/key-refresh.ts';
import { SecretBox } from './security/secrets.ts';
import { TokenRevocations } from './oidc/revocations.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID, createProvider } from './oidc/provider.ts';
import { AccountTokens } from './accounts/tokens.ts';
import { MfaChallenges } from './interactions/mfa-challenges.ts';
import { Lockout } from './security/lockout.ts';
import { LimiterStore, RateLimits } from './security/rate-limit.ts';
import { migrateAtStart } from './migrations/runner.ts';
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
  /** Initial access tokens for dynamic client registration (RFC 7591), and its policy. */
  readonly registration: ClientRegistration;
  readonly documents: DocumentService;
  readonly audit: AuditLog;
  /** Verifies the documents API's access tokens (keys cached from the provider's JWKS). */
  readonly tokenVerifier: AccessTokenVerifier;
  readonly revocations: TokenRevocations;
  /** Shared through Redis; per instance, in memory, while Redis is away. */
  readonly rateLimits: RateLimits;
  /** Where limits are counted now: shared in Redis, or locally while Redis fails. */
  readonly limiters: LimiterStore;
  readonly lockout: Lockout;
  /** Prometheus metrics; only the server collects and serves them (startServices). */
  readonly metrics: Metrics;
  /**
   * Account e-mail, queued in MongoDB and sent by the server's worker with retries: SMTP, or .eml
   * files in the outbox directory without SMTP_URL (development only).
   */
  readonly mailer: MailOutbox;
  /** Back-channel logout tokens waiting to be POSTed to apps, with retries (the server's worker sends them). */
  readonly logoutDeliveries: LogoutDeliveries;
  /** Single-use mailed links (email verification, password reset). */
  readonly accountTokens: AccountTokens;
  /** Sign-ins waiting for their second step. */
  readonly mfaChallenges: MfaChallenges;
  /** Keys for signed cookies, newest first (shared with oidc-provider). */
  readonly cookieKeys: readonly string[];
  /** Seals secrets at rest with SECRETS_KEY: client secrets, TOTP secrets (signing keys: keyRing). */
  readonly secrets: SecretBox;
  /** The signing keys in MongoDB (undefined when OIDC_JWKS supplies them). */
  readonly keyRing: KeyRing | undefined;
  /** The keys in use and published; the server re-reads them (startServices). */
  readonly keys: KeyRefresher;
  /** Whether MongoDB answers (checked only in the server, by startServices). */
  readonly database: DatabaseHealth;
  /** Closes the connections; safe to call more than once. */
  close(): Promise<void>;
}

/** Options of the serving process only. */
interface OpenOptions {
  /** A development server creates the signing keys of a database that has none. */
  mayGenerateKeys?: boolean;
  /** The driver emits an event per command (tests and the bench count them); off costs nothing. */
  monitorCommands?: boolean;
  /** Retry timing of back-channel logout deliveries (tests shorten it). */
  logoutDelivery?: Partial<DeliveryOptions>;
  /** Runs once connected, before any index or data is touched (the server's migrations). */
  beforeData?: (connection: Connection) => Promise<void>;
}

/**
 * Every wait on MongoDB is bounded: finding a server, connecting, getting a pooled connection
 * (1-2 s each: an answer is expected in milliseconds) and the answer itself
 * (MONGODB_OPERATION_TIMEOUT_MS). Nothing is buffered while disconnected: an operation fails at
 * once and its request gets a 503 (src/http/unavailable.ts).
 */
const MONGO_TIMEOUTS = { serverSelectionTimeoutMS: 1000, connectTimeoutMS: 2000, waitQueueTimeoutMS: 1000, heartbeatFrequencyMS: 2000 };
/** A database that is still starting (or restarting) gets this long before start-up gives up. */
const MONGO_START_ATTEMPTS = 15;

async function connectMongo(config: Config, logger: Logger, monitorCommands = false): Promise<{ connection: Connection; uri: string }> {
  const uri = config.mongodbUri ?? (await ensureDevMongo(config.dataDir, (m) => logger.info(m)));
  // Filters built from user input never carry query operators, even if validation missed one.
  mongoose.set('sanitizeFilter', true);
  const options = { ...MONGO_TIMEOUTS, socketTimeoutMS: config.mongodbOperationTimeoutMs, autoIndex: false, bufferCommands: false, monitorCommands };
  for (let attempt = 1; ; attempt++) {
    try {
      return { connection: await mongoose.createConnection(uri, options).asPromise(), uri };
    } catch (error) {
      if (attempt >= MONGO_START_ATTEMPTS) throw error;
      if (attempt === 1) logger.warn({ err: { message: (error as Error).message } }, 'MongoDB not reachable yet; retrying');
      await setTimeout(1000);
    }
  }
}

/**
 * Index builds on a large collection can outlast MONGODB_OPERATION_TIMEOUT_MS; the database goes
 * on building, so such a timeout is logged, not fatal (the next start finds the index there).
 */
async function buildIndexes(logger: Logger, owners: Record<string, { ensureIndexes(): Promise<void> }>): Promise<void> {
  for (const [name, owner] of Object.entries(owners)) {
    try {
      await owner.ensureIndexes();
    } catch (error) {
      if (!(error instanceof mongoose.mongo.MongoNetworkTimeoutError)) throw error;
      logger.warn({ indexes: name }, 'an index build is still running in the database; starting without waiting for it');
    }
  }
}

/** Closing never waits on a database that does not answer. */
async function closeConnections(connection: Connection, redis: Redis | undefined): Promise<void> {
  await Promise.race([
    Promise.allSettled([connection.close(true), redis?.disconnect()]),
    setTimeout(2000, undefined, { ref: false }),
  ]);
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

/**
 * The keys the Provider signs with: OIDC_JWKS, or the key ring's. A development server creates
 * the first keys of an empty ring; production refuses to start without keys; a CLI process (which
 * only validates) gets throwaway keys, so an admin command never writes keys.
 */
async function signingKeys(ring: KeyRing | undefined, config: Config, options: OpenOptions): Promise<PrivateJwks> {
  if (!ring) return config.jwks as PrivateJwks;
  const stored = await ring.privateJwks();
  if (stored) return stored;
  if (options.mayGenerateKeys === undefined) return throwawayJwks();
  if (!options.mayGenerateKeys) {
    throw new Error('No signing keys: set OIDC_JWKS, or run `npm run -s keys -- generate` once against this database');
  }
  await ring.generate();
  return (await ring.privateJwks())!;
}

export async function openServices(config: Config, logger: Logger, options: OpenOptions = {}): Promise<Services> {
  const { connection, uri } = await connectMongo(config, logger, options.monitorCommands);
  let redis: Redis | undefined;
  try {
    redis = connectRedis(config, logger);
    // Give Redis a moment so a healthy start begins connected, but never wait on it for long.
    if (redis) await Promise.race([new Promise((resolve) => redis!.once('ready', resolve)), setTimeout(2000, undefined, { ref: false })]);
    // A missing mail view stops start-up here, before any index or data is touched.
    const mailer = createMailer(config, logger, connection);
    await options.beforeData?.(connection);
    const secrets = new SecretBox(config.secretsKeys);
    const store = new ArtifactStore(connection, { clientCacheSeconds: config.clientCacheSeconds, secrets });

    // Records must outlive every JWT they revoke, whichever grant issued it, and may be written by a
    // CLI process whose TTL_* differ from the server's: keep them for the longest lifetime allowed.
    const revocations = new TokenRevocations(connection, MAX_ACCESS_TOKEN_SECONDS, logger);
    const accounts = new AccountService(connection, new PasswordHasher(config.argon2), async (id) => {
      await Promise.all([store.revokeAccount(id), revocations.revoke('account', id)]);
    }, { minLength: config.accounts.passwordMinLength, minScore: config.accounts.passwordMinScore });
    const accountTokens = new AccountTokens(connection);
    const mfaChallenges = new MfaChallenges(connection);
    const mfa = new MfaService(connection, accounts, { issuer: new URL(config.issuer).hostname, secrets });
    const audit = new AuditLog(connection, logger);
    // The server stops a slow list before the client would give up on its answer.
    const documents = new DocumentService(connection, accounts, logger, audit, { listTimeMs: Math.max(100, config.mongodbOperationTimeoutMs - 500) });
    await buildIndexes(logger, { mailer, store, revocations, accounts, accountTokens, mfaChallenges, mfa, documents });
    // Shares waiting for an address go to an account only once it has proven that address.
    accounts.onEmailVerified(async (account) => {
      // The account exists either way; a share that fails to resolve now is logged, not fatal.
      await documents.claimPendingShares(account.email, account.id)
        .catch((error: unknown) => logger.error({ err: error, accountId: account.id }, 'resolving pending document shares failed'));
    });
    // DPoP proofs name the public URL the API was called at: the issuer's origin, or the audience's.
    const dpop = new DpopVerifier([config.issuer, config.documents.audience], new SeenProofs(redis, logger));
    const tokenVerifier = new AccessTokenVerifier({
      issuer: config.issuer, audience: config.documents.audience, jwksUri: config.documents.jwksUri, revocations, logger, dpop,
    });

    const keyRing = config.jwks ? undefined : keyRingFor(connection, config);
    const jwks = await signingKeys(keyRing, config, options);
    const cookieKeys = config.cookieKeys ?? [randomBytes(32).toString('base64url')];
    // The registration policy applies the client registry's rules; the registry needs the provider.
    let clients: ClientService | undefined;
    const registration = new ClientRegistration(connection, store, () => clients!, logger);
    const provider = createProvider({ config, store, accounts, jwks, cookieKeys, logger, verifyAccessToken: (token) => tokenVerifier.verify(token), registration });
    clients = new ClientService(store, provider, revocations, { isProduction: config.isProduction });
    watchRegistrations(provider, revocations, logger);
    const logoutDeliveries = new LogoutDeliveries(connection, provider, logger, { isProduction: config.isProduction, ...options.logoutDelivery });
    await buildIndexes(logger, { logoutDeliveries });
    propagateLogouts(provider, store, logoutDeliveries, logger);
    const limiters = new LimiterStore(redis, logger);
    const rateLimits = new RateLimits(config.rateLimits, limiters);
    const lockout = new Lockout(config.lockout, limiters);

    let closed = false;
    return {
      config, logger, connection, redis, store, accounts, mfa, provider, clients, registration, documents, audit, tokenVerifier, revocations, cookieKeys,
      secrets, keyRing, keys: new KeyRefresher({ ring: keyRing, provider, logger, audit, jwks }, config.keys),
      rateLimits, limiters, lockout, mailer, logoutDeliveries, accountTokens, mfaChallenges, database: new DatabaseHealth(uri, logger),
      metrics: new Metrics(() => limiters.state()),
      async close() {
        if (closed) return;
        closed = true;
        limiters.close();
        await closeConnections(connection, redis);
      },
    };
  } catch (error) {
    await closeConnections(connection, redis);
    throw error;
  }
}

/** What the server counts: its process, MongoDB's latency, tokens issued and OAuth errors. */
function watchForMetrics({ metrics, connection, provider }: Services): void {
  metrics.includeProcessMetrics();
  metrics.watchMongo(connection.getClient());
  // oidc-provider emits it for supported grant types only, so the label stays within them.
  provider.on('grant.success', (ctx) => metrics.tokensIssued.inc({ grant_type: String(ctx.oidc.params?.grant_type ?? 'unknown') }));
  const oauthError = (_ctx: unknown, error: { error?: unknown }) => metrics.oauthErrors.inc({ error: oauthErrorLabel(error.error) });
  for (const event of [
    'authorization.error', 'grant.error', 'introspection.error', 'revocation.error', 'userinfo.error', 'end_session.error',
    'end_session_confirm.error', 'end_session_success.error', 'pushed_authorization_request.error', 'server_error',
    'device_authorization.error', 'code_verification.error', 'device_resume.error', 'registration_create.error',
  ]) {
    provider.on(event as 'grant.error', oauthError);
  }
}

/** The built-in client of the account pages; only the server writes it, with its own issuer. */
async function ensureAccountConsole(services: Services): Promise<void> {
  await services.clients.ensure(ACCOUNT_CONSOLE_CLIENT_ID, {
    name: 'Your account', isPublic: true, firstParty: true, grantTypes: ['authorization_code'], scope: 'openid',
    redirectUris: [`${services.config.issuer}/account/callback`],
  });
}

/**
 * The serving process's part: opens the services, then the work no CLI command may do. Returns
 * the services and a function that stops the timers and workers (before closing the services).
 */
export async function startServices(
  config: Config, logger: Logger, options: Pick<OpenOptions, 'monitorCommands' | 'logoutDelivery'> = {},
): Promise<{ services: Services; stop: () => Promise<void> }> {
  // Command monitoring feeds the MongoDB latency metric; it costs an event per command, so only
  // where metrics are served.
  const served = config.metrics.port !== undefined || config.metrics.onMainPort;
  const services = await openServices(config, logger, {
    ...options, monitorCommands: served || options.monitorCommands, mayGenerateKeys: !config.isProduction,
    // Applied in development and test; production refuses to start while any is pending.
    beforeData: (connection) => migrateAtStart(connection, config, logger),
  });
  const { store, revocations, audit, accountTokens, mfaChallenges, mfa } = services;
  const stops: (() => void | Promise<void>)[] = [];
  const stopAll = async () => {
    await Promise.allSettled(stops.map((stop) => stop()));
  };
  try {
    if (!config.cookieKeys) logger.warn('COOKIE_KEYS is not set: using a random key, so sessions end when this process stops');
    await ensureAccountConsole(services);
    if (served) watchForMetrics(services);
    stops.push(services.database.start());
    await audit.ensureIndexes(config.auditRetentionDays);
    stops.push(store.startSweeper(config.sweepIntervalSeconds, (error) =>
      logger.error({ err: error }, 'sweeping expired artifacts failed')));
    if (!store.ttlIndexes) logger.info('database has no TTL indexes: expired artifacts are swept periodically');
    stops.push(await revocations.start(config.revocationRefreshSeconds));
    if (!config.secretsKeys) logger.warn('SECRETS_KEY is not set: signing keys, client and TOTP secrets are stored in the clear (development only)');
    stops.push(await services.keys.start());
    stops.push(audit.startRetention());
    const maintenance = setInterval(() => {
      Promise.all([accountTokens.sweep(), mfaChallenges.sweep(), mfa.sweep()])
        .catch((error: unknown) => logger.error({ err: error }, 'sweeping expired account tokens failed'));
    }, 10 * 60_000);
    maintenance.unref();
    stops.push(() => clearInterval(maintenance));
    stops.push(services.mailer.startWorker());
    stops.push(services.logoutDeliveries.startWorker());
    stops.push(services.documents.startAuditRelay());
  } catch (error) {
    await stopAll();
    await services.close();
    throw error;
  }
  return { services, stop: stopAll };
}
