/**
 * Dynamic client registration (RFC 7591) and its management (RFC 7592), when
 * CLIENT_REGISTRATION_ENABLED is set. Nobody registers without an initial access token from
 * `client registration-token create`; each token carries the policy below, which oidc-provider
 * runs on every registration and on every update made with the registration access token (that
 * token inherits it):
 * - the request is read through the same table and rules as the CLI's (client-transfer.ts,
 *   ClientService.metadataFrom), and registered clients are stricter still: redirect URIs are
 *   https, or http on a loopback address; never first-party, never introspect_for, never
 *   documents:admin;
 * - a registration spends one use of its token, decided by inserting a unique `_id` (one per
 *   use: "<token id>:<n>"), which is atomic on MongoDB and on FerretDB alike (a conditional
 *   update of a counter is not atomic on FerretDB), so N concurrent registrations with one use
 *   left make exactly one client. A use is spent only once the metadata has passed every check.
 */
import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import mongoose, { type Collection, type Connection } from 'mongoose';
import { errors, type ClientMetadata, type KoaContextWithOIDC, type Provider } from 'oidc-provider';
import type { ArtifactStore } from '../../adapters/mongodb.ts';
import { AppError, isAppError } from '../http/errors.ts';
import type { Logger } from '../observability/logger.ts';
import { inputFromMetadata } from './client-transfer.ts';
import type { ClientService, StoredClient } from './clients.ts';
import type { TokenRevocations } from './revocations.ts';

/** The name of the one policy every initial access token carries. */
export const REGISTRATION_POLICY = 'registry-rules';
/** Settable only by an administrator: a registration may not ask for them, nor change them. */
const ADMIN_ONLY = ['first_party', 'introspect_for', 'registered_dynamically'] as const;
const LOOPBACK_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '[::1]'];
export const MAX_USES = 1000;
export const DEFAULT_EXPIRES_IN = 24 * 60 * 60;
export const MAX_EXPIRES_IN = 365 * 24 * 60 * 60;

interface TokenRecord {
  /** The public id (16 hex digits), also the token's prefix: "<id>.<secret>". */
  _id: string;
  uses: number;
  createdAt: Date;
  expiresAt: Date;
  createdBy: string;
}

interface UseRecord { _id: string; tokenId: string; at: Date }

export interface RegistrationTokenInfo {
  id: string;
  uses: number;
  used: number;
  created_at: string;
  expires_at: string;
  created_by: string;
}

const idOfToken = (token: string): string | undefined => /^([0-9a-f]{16})\./.exec(token)?.[1];
const useId = (tokenId: string, n: number) => `${tokenId}:${n}`;

/** Owns the initial access tokens and their uses, and the policy oidc-provider runs with them. */
export class ClientRegistration {
  private readonly store: ArtifactStore;
  private readonly records: Collection<TokenRecord>;
  private readonly uses: Collection<UseRecord>;
  private readonly clients: () => ClientService;
  private readonly logger: Logger;

  /** `clients` is read per request: the registry is built after the provider it validates with. */
  constructor(connection: Connection, store: ArtifactStore, clients: () => ClientService, logger: Logger) {
    this.store = store;
    this.records = connection.collection<TokenRecord>('registration_tokens');
    this.uses = connection.collection<UseRecord>('registration_token_uses');
    this.clients = clients;
    this.logger = logger;
  }

  /** For oidc-provider's features.registration.policies. */
  readonly policies = {
    [REGISTRATION_POLICY]: (ctx: KoaContextWithOIDC, properties: ClientMetadata) => this.apply(ctx, properties),
  };

  /** Registered clients get ids of the same form as the CLI's. */
  readonly idFactory = () => randomBytes(16).toString('hex');

  /** Creates a token; its value is returned only here. */
  async create(provider: Provider, options: { expiresIn?: number; uses?: number; createdBy: string }): Promise<{ token: string; info: RegistrationTokenInfo }> {
    const expiresIn = options.expiresIn ?? DEFAULT_EXPIRES_IN;
    const uses = options.uses ?? 1;
    if (!Number.isInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_EXPIRES_IN) throw new AppError('invalid_request', `expires in must be 1 to ${MAX_EXPIRES_IN} seconds`);
    if (!Number.isInteger(uses) || uses < 1 || uses > MAX_USES) throw new AppError('invalid_request', `uses must be 1 to ${MAX_USES}`);
    await this.forgetExpired();
    const id = randomBytes(8).toString('hex');
    const token = `${id}.${randomBytes(32).toString('base64url')}`;
    const now = new Date();
    const record: TokenRecord = { _id: id, uses, createdAt: now, expiresAt: new Date(now.getTime() + expiresIn * 1000), createdBy: options.createdBy };
    // The record first: a token without its record is refused by the policy anyway.
    await this.records.insertOne(record);
    await new provider.InitialAccessToken({ jti: token, expiresIn, policies: [REGISTRATION_POLICY] }).save();
    return { token, info: this.describe(record, 0) };
  }

  /** Tokens that have not expired, with how often each was used; never their values. */
  async list(): Promise<RegistrationTokenInfo[]> {
    await this.forgetExpired();
    const records = await this.records.find().sort({ createdAt: 1, _id: 1 }).toArray();
    return Promise.all(records.map(async (r) => this.describe(r, await this.uses.countDocuments({ tokenId: r._id }))));
  }

  /** Ends a token at once; false when there is no such (unexpired) token. */
  async revoke(id: string): Promise<boolean> {
    if (!/^[0-9a-f]{16}$/.test(id)) return false;
    const { deletedCount } = await this.records.deleteOne({ _id: id });
    await this.end(id);
    return deletedCount === 1;
  }

  private describe(record: TokenRecord, used: number): RegistrationTokenInfo {
    return {
      id: record._id, uses: record.uses, used: Math.min(used, record.uses), created_at: record.createdAt.toISOString(),
      expires_at: record.expiresAt.toISOString(), created_by: record.createdBy,
    };
  }

  /** The token's artifact and uses; the artifact's id is the token, whose prefix is the id. */
  private async end(id: string): Promise<void> {
    await this.store.collection('InitialAccessToken').deleteMany({ _id: { $regex: `^${id}\\.` } });
    await this.uses.deleteMany({ tokenId: id });
  }

  private async forgetExpired(): Promise<void> {
    const expired = await this.records.find({ expiresAt: { $lte: new Date() } }, { projection: { _id: 1 } }).limit(100).toArray();
    for (const { _id } of expired) {
      await this.records.deleteOne({ _id });
      await this.end(_id);
    }
  }

  /**
   * Spends one use of the token: tries the next free use id, counted from how many are taken;
   * every use below it exists (uses are inserted in order), so at most `uses` inserts succeed.
   */
  private async spend(token: string): Promise<boolean> {
    const id = idOfToken(token);
    const record = id ? await this.records.findOne({ _id: id }) : null;
    if (!record || record.expiresAt.getTime() <= Date.now()) return false;
    const taken = await this.uses.countDocuments({ tokenId: record._id });
    for (let n = taken + 1; n <= record.uses; n++) {
      if (!(await this.insertUse({ _id: useId(record._id, n), tokenId: record._id, at: new Date() }))) continue;
      // The last use: the token is no longer accepted at all.
      if (n === record.uses) await this.store.collection('InitialAccessToken').deleteMany({ _id: token });
      return true;
    }
    return false;
  }

  /** True when this insert made the use; false when it existed already. */
  private async insertUse(use: UseRecord): Promise<boolean> {
    try {
      await this.uses.insertOne(use);
      return true;
    } catch (error) {
      if (!(error instanceof mongoose.mongo.MongoServerError)) throw error;
      // A duplicate key (FerretDB does not always say so with code 11000): the use exists.
      if (await this.uses.findOne({ _id: use._id })) return false;
      throw error;
    }
  }

  /** The registration policy: our rules replace the request's metadata, or refuse it. */
  private async apply(ctx: KoaContextWithOIDC, properties: ClientMetadata): Promise<void> {
    const creating = ctx.oidc.route === 'registration';
    const current = creating ? undefined : (ctx.oidc.client?.metadata() as Partial<StoredClient> | undefined);
    const requested = properties as Record<string, unknown>;
    for (const key of ADMIN_ONLY) {
      // A GET response sent back as an update (RFC 7592) repeats them unchanged: that is allowed.
      if (!isDeepStrictEqual(setting(requested[key]), setting(current?.[key]))) {
        throw new errors.InvalidClientMetadata(`${key} cannot be registered`);
      }
    }
    // Least privilege: only an administrator may let a confidential client leave out PKCE.
    if (requested.pkce_required === false) throw new errors.InvalidClientMetadata('pkce_required cannot be turned off by registration');
    const responseTypes = requested.response_types;
    if (responseTypes !== undefined && !isDeepStrictEqual(responseTypes, ['code']) && !isDeepStrictEqual(responseTypes, [])) {
      throw new errors.InvalidClientMetadata('response_types must be ["code"] (or [] without authorization_code)');
    }
    const metadata = await this.metadataFor(requested, {
      client_id: properties.client_id,
      client_id_issued_at: properties.client_id_issued_at,
      client_secret: properties.client_secret,
      ...(current?.first_party ? { first_party: true } : {}),
      ...(current?.introspect_for?.length ? { introspect_for: current.introspect_for } : {}),
    });
    // Marks the client as one that registered itself: --prune leaves it, and its back-channel
    // logout POSTs go to public addresses only (src/logout/send.ts).
    metadata.registered_dynamically = true;
    if (creating) {
      delete metadata.client_updated_at;
      const token = ctx.oidc.entities.InitialAccessToken?.jti;
      if (!token || !(await this.spend(token))) throw new errors.InvalidToken('the initial access token has no uses left');
      this.logger.info({ clientId: metadata.client_id }, 'client registered');
    }
    for (const key of Object.keys(properties)) delete (properties as Record<string, unknown>)[key];
    Object.assign(properties, metadata, metadata.client_secret ? { client_secret_expires_at: 0 } : {});
  }

  private async metadataFor(requested: Record<string, unknown>, base: Partial<StoredClient>): Promise<StoredClient> {
    let metadata: StoredClient;
    try {
      const input = inputFromMetadata(requested, { unknown: 'ignore', skip: [...ADMIN_ONLY, 'client_secret', 'client_id_issued_at'] });
      if (input.scope?.split(' ').includes('documents:admin')) throw new AppError('invalid_client_metadata', 'scope documents:admin cannot be registered');
      metadata = this.clients().metadataFrom(input, base);
      checkRedirectUris(metadata);
      await this.clients().validate(metadata);
    } catch (error) {
      if (isAppError(error)) throw new errors.InvalidClientMetadata(error.message);
      throw error;
    }
    return metadata;
  }
}

/** false, null and [] set nothing. */
const setting = (value: unknown) => (value === false || value === null || (Array.isArray(value) && value.length === 0) ? undefined : value);

/** https, or http on a loopback address (RFC 8252 native apps, local development). */
function checkRedirectUris(metadata: StoredClient): void {
  const acceptable = (uri: string) => {
    const url = URL.parse(uri);
    if (!url) return false;
    if (metadata.application_type === 'native' && !['http:', 'https:'].includes(url.protocol)) return true; // private-use schemes
    return url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK_HOSTS.includes(url.hostname));
  };
  const bad = metadata.redirect_uris?.find((uri) => !acceptable(uri));
  if (bad) throw new errors.InvalidRedirectUri('redirect_uris must use https (http only on a loopback address)');
  if (metadata.post_logout_redirect_uris?.some((uri) => !acceptable(uri))) {
    throw new errors.InvalidClientMetadata('post_logout_redirect_uris must use https (http only on a loopback address)');
  }
}

/** A client deleted through RFC 7592 loses what it obtained, as one deleted from the CLI does. */
export function watchRegistrations(provider: Provider, revocations: TokenRevocations, logger: Logger): void {
  provider.on('registration_delete.success', (_ctx, client) => {
    revocations.revoke('client', client.clientId)
      .catch((error: unknown) => logger.error({ err: error, clientId: client.clientId }, 'revoking the tokens of a deleted client failed'));
  });
}
