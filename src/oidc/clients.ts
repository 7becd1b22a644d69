/**
 * OAuth client registry, used by the admin CLI and by tests. Clients are stored as oidc-provider
 * Client artifacts (through the same adapter the provider reads them with) and every write is
 * validated by oidc-provider's own client schema first, so nothing invalid is ever stored.
 * The built-in account-console client is written only by the server (`ensure`); admin commands
 * may read it but not change it.
 */
import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import type { Provider, ClientMetadata, JWK } from 'oidc-provider';
import { z } from 'zod';
import { readPayload, type ArtifactStore } from '../../adapters/mongodb.ts';
import { AppError } from '../http/errors.ts';
import { extraClientMetadata, type ClientPolicyMetadata } from './client-metadata.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID, DOCUMENTS_SCOPES, SCOPES } from './provider.ts';
import type { TokenRevocations } from './revocations.ts';

const REGISTRABLE_SCOPES: readonly string[] = [...SCOPES, ...DOCUMENTS_SCOPES];

/** RFC 8628: the grant type a device (TV, CLI) polls the token endpoint with. */
export const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

export const GRANT_TYPES = ['authorization_code', 'refresh_token', 'client_credentials', DEVICE_CODE_GRANT] as const;

/** The token endpoint authentication methods a client can be registered with; `none` is a public client. */
export const AUTH_METHODS = ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

const SECRET_METHODS: readonly string[] = ['client_secret_basic', 'client_secret_post', 'client_secret_jwt'];
const LOOPBACK_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '[::1]'];

/** Only the shape is checked here; each key's parameters are checked by oidc-provider's validation. */
const publicJwks = z.object({ keys: z.array(z.looseObject({ kty: z.string() })).min(1) }).strict();

export interface ClientInput {
  name?: string | undefined;
  redirectUris?: string[] | undefined;
  postLogoutRedirectUris?: string[] | undefined;
  isPublic?: boolean | undefined;
  grantTypes?: string[] | undefined;
  scope?: string | undefined;
  applicationType?: 'web' | 'native' | undefined;
  /** ES256 (the default), EdDSA or RS256. */
  idTokenSigningAlg?: string | undefined;
  /** Accept only sign-ins with two-step verification. */
  requireMfa?: boolean | undefined;
  /** false lets a confidential client leave out PKCE; a public client always needs it. */
  pkceRequired?: boolean | undefined;
  /** `none` is the same as isPublic; a client without one keeps its method (new ones: Basic). */
  tokenEndpointAuthMethod?: AuthMethod | undefined;
  /** private_key_jwt: where the client publishes its public keys (https, or http on loopback)... */
  jwksUri?: string | undefined;
  /** ...or the public keys themselves. */
  jwks?: unknown;
  /** The provider's own apps, which never ask for consent. */
  firstParty?: boolean | undefined;
  idTokenClaims?: 'full' | 'minimal' | undefined;
  /** Audiences whose tokens the client may introspect; an empty list clears them. */
  introspectFor?: string[] | undefined;
  /** Back-channel logout: where logout tokens are POSTed (https, or http on loopback outside production); null removes it. */
  backchannelLogoutUri?: string | null | undefined;
  /** Logout tokens (and ID tokens) then carry `sid`. */
  backchannelLogoutSessionRequired?: boolean | undefined;
  /** RFC 9449 dpop_bound_access_tokens: the token endpoint refuses this client's requests without a DPoP proof. */
  requireDpop?: boolean | undefined;
}

export interface ClientServiceOptions {
  /** Production refuses plain-http back-channel logout URIs, loopback ones included. */
  isProduction?: boolean;
}

export interface StoredClient extends ClientMetadata, ClientPolicyMetadata {
  client_id: string;
  client_id_issued_at: number;
  client_updated_at?: number;
}

const DEFAULT_SCOPE = 'openid profile email offline_access';

function invalid(message: string): AppError {
  return new AppError('invalid_client_metadata', message);
}

/** An explicit method wins, then isPublic; otherwise the registered method is kept. */
function authMethodFrom(input: ClientInput, current: string | undefined): string {
  const method = input.tokenEndpointAuthMethod;
  if (method !== undefined && !(AUTH_METHODS as readonly string[]).includes(method)) {
    throw invalid(`token endpoint auth method "${method}" is not supported (${AUTH_METHODS.join(', ')})`);
  }
  if (input.isPublic === true && method !== undefined && method !== 'none') {
    throw invalid(`a public client has token endpoint auth method none, not ${method}`);
  }
  if (method) return method;
  if (input.isPublic === true) return 'none';
  // A new client, or one that stops being public, gets Basic; otherwise the registered method stays.
  if (current === undefined || (input.isPublic === false && current === 'none')) return 'client_secret_basic';
  return current;
}

function checkJwksUri(value: string): string {
  const url = URL.canParse(value) ? new URL(value) : undefined;
  const allowed = url && !url.hash && !url.username && !url.password
    && (url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK_HOSTS.includes(url.hostname)));
  if (!allowed) throw invalid('jwks_uri must be an https URL (http only for localhost, 127.0.0.1 or [::1]), without credentials or fragment');
  return value;
}

function checkPublicJwks(value: unknown): { keys: JWK[] } {
  const parsed = publicJwks.safeParse(value);
  if (!parsed.success) throw invalid('jwks must be a JSON Web Key Set: {"keys": [...]} with at least one key');
  // A private key handed to us would be a private key leaked: refuse it rather than strip it.
  if (parsed.data.keys.some((key) => 'd' in key)) throw invalid('jwks must hold public keys only (a key has "d", the private part)');
  return parsed.data as { keys: JWK[] };
}

/**
 * A logout token is a credential-like message about a user: it goes over https, or over plain
 * http to this machine while developing. Credentials and fragments have no place in it.
 */
export function logoutUriAllowed(value: string, isProduction: boolean): boolean {
  const url = URL.canParse(value) ? new URL(value) : undefined;
  return url !== undefined && !url.hash && !url.username && !url.password
    && (url.protocol === 'https:' || (url.protocol === 'http:' && !isProduction && LOOPBACK_HOSTS.includes(url.hostname)));
}

function backchannelFrom(input: ClientInput, base: Partial<StoredClient>, isProduction: boolean): Pick<StoredClient, 'backchannel_logout_uri' | 'backchannel_logout_session_required'> {
  const uri = input.backchannelLogoutUri === null ? undefined : input.backchannelLogoutUri ?? base.backchannel_logout_uri;
  const sessionRequired = input.backchannelLogoutSessionRequired ?? base.backchannel_logout_session_required;
  if (uri === undefined) {
    if (input.backchannelLogoutSessionRequired) throw invalid('--backchannel-logout-session-required needs a --backchannel-logout-uri');
    return {};
  }
  if (input.backchannelLogoutUri !== undefined && !logoutUriAllowed(uri, isProduction)) {
    throw invalid(`backchannel_logout_uri must be an https URL${isProduction ? '' : ' (http only for localhost, 127.0.0.1 or [::1])'}, without credentials or fragment`);
  }
  return { backchannel_logout_uri: uri, ...(sessionRequired ? { backchannel_logout_session_required: true } : {}) };
}

/** private_key_jwt needs exactly one of jwks / jwks_uri; every other method has neither. */
function keysFrom(input: ClientInput, base: Partial<StoredClient>, method: string): Pick<StoredClient, 'jwks' | 'jwks_uri'> {
  const given = input.jwks !== undefined || input.jwksUri !== undefined;
  if (method !== 'private_key_jwt') {
    if (given) throw invalid('--jwks and --jwks-uri are only for token endpoint auth method private_key_jwt');
    return {};
  }
  if (input.jwks !== undefined && input.jwksUri !== undefined) throw invalid('use either jwks or jwks_uri, not both');
  if (input.jwks !== undefined) return { jwks: checkPublicJwks(input.jwks) };
  if (input.jwksUri !== undefined) return { jwks_uri: checkJwksUri(input.jwksUri) };
  if (base.jwks) return { jwks: base.jwks };
  if (base.jwks_uri) return { jwks_uri: base.jwks_uri };
  throw invalid('private_key_jwt needs the client\'s public keys: --jwks-uri URL or --jwks JSON');
}

/** Our own metadata (src/oidc/client-metadata.ts), with the rules that join it to the auth method. */
function policyFrom(input: ClientInput, base: Partial<StoredClient>, isPublic: boolean): ClientPolicyMetadata {
  const policy: ClientPolicyMetadata = {};
  const requireMfa = input.requireMfa ?? base.require_mfa;
  if (requireMfa) policy.require_mfa = true;
  const pkceRequired = input.pkceRequired ?? base.pkce_required;
  if (isPublic && pkceRequired === false) {
    throw invalid('a public client (token endpoint auth method none) always requires PKCE: use --pkce required');
  }
  if (pkceRequired !== undefined) policy.pkce_required = pkceRequired;
  if (input.firstParty ?? base.first_party) policy.first_party = true;
  const idTokenClaims = input.idTokenClaims ?? base.id_token_claims;
  if (idTokenClaims !== undefined) policy.id_token_claims = idTokenClaims;
  const introspectFor = input.introspectFor ?? base.introspect_for ?? [];
  if (introspectFor.length && isPublic) {
    throw invalid('a public client cannot introspect tokens: introspect_for is only for confidential clients');
  }
  if (introspectFor.length) policy.introspect_for = [...new Set(introspectFor)];
  return policy;
}

/** The provider's own clients are written by the server at start, never by an admin. */
function refuseBuiltin(clientId: string): void {
  if (clientId === ACCOUNT_CONSOLE_CLIENT_ID) {
    throw new AppError('builtin_client', `"${clientId}" is built into the server and cannot be changed or deleted`, 403);
  }
}

/** Equal but for bookkeeping (when it was last written); absent, null and undefined alike. */
function sameMetadata(a: StoredClient, b: StoredClient): boolean {
  const comparable = (client: StoredClient) => Object.fromEntries(Object.entries(client)
    .filter(([key, value]) => value !== undefined && value !== null && key !== 'client_updated_at'));
  return isDeepStrictEqual(comparable(a), comparable(b));
}

function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * 128 random bits in hex: unlike base64url, never starting with "-", which every command line
 * (ours included) would read as an option (`client update -Sx...`).
 */
function newClientId(): string {
  return randomBytes(16).toString('hex');
}

export class ClientService {
  private readonly store: ArtifactStore;
  private readonly provider: Provider;
  private readonly revocations: TokenRevocations;
  private readonly options: ClientServiceOptions;

  constructor(store: ArtifactStore, provider: Provider, revocations: TokenRevocations, options: ClientServiceOptions = {}) {
    this.store = store;
    this.provider = provider;
    this.revocations = revocations;
    this.options = options;
  }

  private get adapter() {
    return this.store.adapterFor('Client');
  }

  /**
   * The metadata a client gets from `input` over `base` (what `input` leaves out comes from
   * `base`), with every rule of this registry applied; not yet validated by oidc-provider nor
   * stored. Dynamic registration applies it too (src/oidc/registration.ts).
   */
  metadataFrom(input: ClientInput, base: Partial<StoredClient>): StoredClient {
    const grantTypes = input.grantTypes ?? base.grant_types ?? ['authorization_code', 'refresh_token'];
    const unknownGrant = grantTypes.find((g) => !(GRANT_TYPES as readonly string[]).includes(g));
    if (unknownGrant) throw new AppError('invalid_client_metadata', `grant type "${unknownGrant}" is not supported (${GRANT_TYPES.join(', ')})`);
    const scope = input.scope ?? base.scope ?? DEFAULT_SCOPE;
    const unknownScope = scope.split(' ').find((s) => !REGISTRABLE_SCOPES.includes(s));
    if (unknownScope) throw new AppError('invalid_client_metadata', `scope "${unknownScope}" is not supported (${REGISTRABLE_SCOPES.join(', ')})`);
    const authMethod = authMethodFrom(input, base.token_endpoint_auth_method);
    const isPublic = authMethod === 'none';
    if (isPublic && grantTypes.includes('client_credentials')) {
      throw new AppError('invalid_client_metadata', 'a public client cannot use client_credentials');
    }
    const usesRedirects = grantTypes.includes('authorization_code');
    const metadata: StoredClient = {
      client_id: base.client_id ?? newClientId(),
      client_id_issued_at: base.client_id_issued_at ?? Math.floor(Date.now() / 1000),
      client_name: input.name ?? base.client_name,
      application_type: input.applicationType ?? base.application_type ?? 'web',
      grant_types: [...new Set(grantTypes)],
      response_types: usesRedirects ? ['code'] : [],
      redirect_uris: usesRedirects ? (input.redirectUris ?? base.redirect_uris ?? []) : [],
      post_logout_redirect_uris: input.postLogoutRedirectUris ?? base.post_logout_redirect_uris ?? [],
      scope: [...new Set(scope.split(' '))].join(' '),
      token_endpoint_auth_method: authMethod as ClientMetadata['token_endpoint_auth_method'],
      ...keysFrom(input, base, authMethod),
      ...policyFrom(input, base, isPublic),
      ...backchannelFrom(input, base, this.options.isProduction === true),
    };
    if (input.requireDpop ?? base.dpop_bound_access_tokens) metadata.dpop_bound_access_tokens = true;
    const alg = input.idTokenSigningAlg ?? base.id_token_signed_response_alg;
    // Checked against the enabled algorithms by oidc-provider's validation below.
    if (alg) metadata.id_token_signed_response_alg = alg as ClientMetadata['id_token_signed_response_alg'];
    // Only the secret methods keep a secret: a private_key_jwt client has none to leak, and going
    // back to a secret method issues a fresh one.
    if (SECRET_METHODS.includes(authMethod)) metadata.client_secret = base.client_secret ?? newSecret();
    if (base.client_id) metadata.client_updated_at = Math.floor(Date.now() / 1000);
    if (usesRedirects && metadata.redirect_uris!.length === 0) {
      throw new AppError('invalid_client_metadata', 'at least one --redirect-uri is required for authorization_code');
    }
    return metadata;
  }

  private async validateAndStore(metadata: StoredClient): Promise<StoredClient> {
    await this.validate(metadata);
    await this.adapter.upsert(metadata.client_id, { ...metadata });
    return metadata;
  }

  /** Checks metadata as the provider will when it reads the client; throws invalid_client_metadata. */
  async validate(metadata: StoredClient): Promise<void> {
    try {
      // Our properties are checked by the same validator the provider is configured with, so the
      // answer does not depend on how this provider instance was built.
      for (const key of extraClientMetadata.properties!) {
        const value = (metadata as Record<string, unknown>)[key];
        extraClientMetadata.validator!(undefined as never, key, value, metadata as ClientMetadata);
      }
      await this.provider.Client.validate(metadata);
    } catch (error) {
      const description = (error as { error_description?: string }).error_description ?? (error as Error).message;
      throw new AppError('invalid_client_metadata', description);
    }
  }

  async create(input: ClientInput): Promise<StoredClient> {
    return this.validateAndStore(this.metadataFrom(input, {}));
  }

  /**
   * Creates or updates a client with a fixed id (the provider's own account pages), so every
   * instance agrees on it and a restart changes nothing.
   */
  async ensure(clientId: string, input: ClientInput): Promise<StoredClient> {
    const current = await this.get(clientId);
    return this.validateAndStore(this.metadataFrom(input, current ?? { client_id: clientId }));
  }

  /**
   * Puts a client in exactly the state `input` describes (clients as code): unlike update, what
   * the input leaves out goes back to its default. The id, its issue date and the secret are
   * kept (a client that newly needs a secret gets one). Nothing is written when the client is in
   * that state already; `dryRun` only validates.
   */
  async replace(clientId: string, input: ClientInput, options: { dryRun?: boolean } = {}): Promise<{ client: StoredClient; outcome: 'created' | 'updated' | 'unchanged' }> {
    refuseBuiltin(clientId);
    const current = await this.get(clientId);
    const identity: Partial<StoredClient> = current
      ? { client_id: clientId, client_id_issued_at: current.client_id_issued_at, client_secret: current.client_secret }
      : { client_id: clientId };
    const next = this.metadataFrom(input, identity);
    if (!current) delete next.client_updated_at;
    const outcome = !current ? 'created' : sameMetadata(current, next) ? 'unchanged' : 'updated';
    if (outcome === 'unchanged') return { client: current!, outcome };
    if (options.dryRun) {
      await this.validate(next);
      return { client: next, outcome };
    }
    await this.validateAndStore(next);
    if (current?.client_secret && !next.client_secret) await this.revocations.revoke('client', clientId);
    return { client: next, outcome };
  }

  async get(clientId: string): Promise<StoredClient | undefined> {
    return (await this.adapter.find(clientId)) as StoredClient | undefined;
  }

  async require(clientId: string): Promise<StoredClient> {
    const client = await this.get(clientId);
    if (!client) throw new AppError('client_not_found', `no client with id "${clientId}"`, 404);
    return client;
  }

  /** Lists clients without their secrets. */
  async list(): Promise<Omit<StoredClient, 'client_secret'>[]> {
    const docs = await this.store.collection('Client').find().sort({ 'payload.client_id_issued_at': 1, _id: 1 }).toArray();
    return docs.map(({ payload }) => {
      const { client_secret: _secret, ...rest } = readPayload(payload) as StoredClient;
      return rest;
    });
  }

  async update(clientId: string, input: ClientInput): Promise<StoredClient> {
    refuseBuiltin(clientId);
    const current = await this.require(clientId);
    const updated = await this.validateAndStore(this.metadataFrom(input, current));
    // Dropping the secret (private_key_jwt, or public) is like rotating it: what it obtained ends.
    if (current.client_secret && !updated.client_secret) await this.revocations.revoke('client', clientId);
    return updated;
  }

  async rotateSecret(clientId: string): Promise<StoredClient> {
    refuseBuiltin(clientId);
    const current = await this.require(clientId);
    if (!SECRET_METHODS.includes(current.token_endpoint_auth_method ?? 'client_secret_basic')) {
      throw invalid(`a client with token endpoint auth method ${current.token_endpoint_auth_method} has no secret`);
    }
    const rotated = await this.validateAndStore({ ...current, client_secret: newSecret(), client_updated_at: Math.floor(Date.now() / 1000) });
    // A secret is rotated because the old one may be known: JWTs obtained with it stop working.
    await this.revocations.revoke('client', clientId);
    return rotated;
  }

  async delete(clientId: string): Promise<void> {
    refuseBuiltin(clientId);
    await this.require(clientId);
    await this.adapter.destroy(clientId);
    await this.revocations.revoke('client', clientId);
  }
}
