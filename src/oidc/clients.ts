/**
 * OAuth client registry, used by the admin CLI and by tests. Clients are stored as oidc-provider
 * Client artifacts (through the same adapter the provider reads them with) and every write is
 * validated by oidc-provider's own client schema first, so nothing invalid is ever stored.
 */
import { randomBytes } from 'node:crypto';
import type { Provider, ClientMetadata } from 'oidc-provider';
import { readPayload, type ArtifactStore } from '../../adapters/mongodb.ts';
import { AppError } from '../http/errors.ts';
import { DOCUMENTS_SCOPES, SCOPES } from './provider.ts';
import type { TokenRevocations } from './revocations.ts';

const REGISTRABLE_SCOPES: readonly string[] = [...SCOPES, ...DOCUMENTS_SCOPES];

export const GRANT_TYPES = ['authorization_code', 'refresh_token', 'client_credentials'] as const;

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
}

export interface StoredClient extends ClientMetadata {
  client_id: string;
  require_mfa?: boolean;
  client_id_issued_at: number;
  client_updated_at?: number;
}

const DEFAULT_SCOPE = 'openid profile email offline_access';

/** Keeps a confidential client's registered method; a client without one gets Basic auth. */
function confidentialAuthMethod(current: ClientMetadata['token_endpoint_auth_method']): ClientMetadata['token_endpoint_auth_method'] {
  return current && current !== 'none' ? current : 'client_secret_basic';
}

function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

export class ClientService {
  private readonly store: ArtifactStore;
  private readonly provider: Provider;
  private readonly revocations: TokenRevocations;

  constructor(store: ArtifactStore, provider: Provider, revocations: TokenRevocations) {
    this.store = store;
    this.provider = provider;
    this.revocations = revocations;
  }

  private get adapter() {
    return this.store.adapterFor('Client');
  }

  private metadataFrom(input: ClientInput, base: Partial<StoredClient>): StoredClient {
    const grantTypes = input.grantTypes ?? base.grant_types ?? ['authorization_code', 'refresh_token'];
    const unknownGrant = grantTypes.find((g) => !(GRANT_TYPES as readonly string[]).includes(g));
    if (unknownGrant) throw new AppError('invalid_client_metadata', `grant type "${unknownGrant}" is not supported (${GRANT_TYPES.join(', ')})`);
    const scope = input.scope ?? base.scope ?? DEFAULT_SCOPE;
    const unknownScope = scope.split(' ').find((s) => !REGISTRABLE_SCOPES.includes(s));
    if (unknownScope) throw new AppError('invalid_client_metadata', `scope "${unknownScope}" is not supported (${REGISTRABLE_SCOPES.join(', ')})`);
    const isPublic = input.isPublic ?? base.token_endpoint_auth_method === 'none';
    if (isPublic && grantTypes.includes('client_credentials')) {
      throw new AppError('invalid_client_metadata', 'a public client cannot use client_credentials');
    }
    const usesRedirects = grantTypes.includes('authorization_code');
    const metadata: StoredClient = {
      client_id: base.client_id ?? randomBytes(16).toString('base64url'),
      client_id_issued_at: base.client_id_issued_at ?? Math.floor(Date.now() / 1000),
      client_name: input.name ?? base.client_name,
      application_type: input.applicationType ?? base.application_type ?? 'web',
      grant_types: [...new Set(grantTypes)],
      response_types: usesRedirects ? ['code'] : [],
      redirect_uris: usesRedirects ? (input.redirectUris ?? base.redirect_uris ?? []) : [],
      post_logout_redirect_uris: input.postLogoutRedirectUris ?? base.post_logout_redirect_uris ?? [],
      scope: [...new Set(scope.split(' '))].join(' '),
      token_endpoint_auth_method: isPublic ? 'none' : confidentialAuthMethod(base.token_endpoint_auth_method),
    };
    const alg = input.idTokenSigningAlg ?? base.id_token_signed_response_alg;
    // Checked against the enabled algorithms by oidc-provider's validation below.
    if (alg) metadata.id_token_signed_response_alg = alg as ClientMetadata['id_token_signed_response_alg'];
    const requireMfa = input.requireMfa ?? base.require_mfa;
    if (requireMfa) metadata.require_mfa = true;
    if (!isPublic) metadata.client_secret = base.client_secret ?? newSecret();
    if (base.client_id) metadata.client_updated_at = Math.floor(Date.now() / 1000);
    if (usesRedirects && metadata.redirect_uris!.length === 0) {
      throw new AppError('invalid_client_metadata', 'at least one --redirect-uri is required for authorization_code');
    }
    return metadata;
  }

  private async validateAndStore(metadata: StoredClient): Promise<StoredClient> {
    try {
      await this.provider.Client.validate(metadata);
    } catch (error) {
      const description = (error as { error_description?: string }).error_description ?? (error as Error).message;
      throw new AppError('invalid_client_metadata', description);
    }
    await this.adapter.upsert(metadata.client_id, { ...metadata });
    return metadata;
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
    const current = await this.require(clientId);
    return this.validateAndStore(this.metadataFrom(input, current));
  }

  async rotateSecret(clientId: string): Promise<StoredClient> {
    const current = await this.require(clientId);
    if (current.token_endpoint_auth_method === 'none') {
      throw new AppError('invalid_client_metadata', 'a public client has no secret');
    }
    const rotated = await this.validateAndStore({ ...current, client_secret: newSecret(), client_updated_at: Math.floor(Date.now() / 1000) });
    // A secret is rotated because the old one may be known: JWTs obtained with it stop working.
    await this.revocations.revoke('client', clientId);
    return rotated;
  }

  async delete(clientId: string): Promise<void> {
    await this.require(clientId);
    await this.adapter.destroy(clientId);
    await this.revocations.revoke('client', clientId);
  }
}
