/**
 * Our own client metadata, next to the registered (RFC 7591) fields oidc-provider knows. Each
 * property is validated by oidc-provider's schema hook below, so a client stored by the CLI and a
 * client read by the provider always agree, and `clientPolicy` is the one place that reads them.
 */
import { errors, type Client, type Configuration } from 'oidc-provider';

export interface ClientPolicyMetadata {
  /** Sign-ins for this client must end with two-step verification. */
  require_mfa?: boolean;
  /** false lets a confidential client send no PKCE (public clients always need it). */
  pkce_required?: boolean;
  /** The provider's own apps: consent is never asked. */
  first_party?: boolean;
  /** 'full' (default): scope claims in the ID token as well as userinfo; 'minimal': userinfo only. */
  id_token_claims?: 'full' | 'minimal';
  /** Audiences (resource indicators) whose tokens this client may introspect as a resource server. */
  introspect_for?: string[];
  /** Set by dynamic registration (RFC 7591): the client registered itself (src/oidc/registration.ts). */
  registered_dynamically?: boolean;
}

export const ID_TOKEN_CLAIMS = ['full', 'minimal'] as const;

const booleans = ['require_mfa', 'pkce_required', 'first_party', 'registered_dynamically'] as const;

export const extraClientMetadata: NonNullable<Configuration['extraClientMetadata']> = {
  properties: [...booleans, 'id_token_claims', 'introspect_for'],
  validator: (_ctx, key, value) => {
    if (value === undefined) return;
    if ((booleans as readonly string[]).includes(key) && typeof value !== 'boolean') {
      throw new errors.InvalidClientMetadata(`${key} must be true or false`);
    }
    if (key === 'id_token_claims' && !(ID_TOKEN_CLAIMS as readonly unknown[]).includes(value)) {
      throw new errors.InvalidClientMetadata(`id_token_claims must be one of ${ID_TOKEN_CLAIMS.join(', ')}`);
    }
    if (key === 'introspect_for') {
      const valid = Array.isArray(value) && value.every((v) => typeof v === 'string' && URL.canParse(v) && !v.includes('#'));
      if (!valid) throw new errors.InvalidClientMetadata('introspect_for must be a list of absolute URLs without a fragment');
    }
  },
};

export interface ClientPolicy {
  requireMfa: boolean;
  firstParty: boolean;
  idTokenClaims: 'full' | 'minimal';
  introspectFor: readonly string[];
  registeredDynamically: boolean;
}

/**
 * The policy a client is registered with, defaults filled in. PKCE is decided in provider.ts,
 * where the deployment's default for confidential clients is known.
 */
export function clientPolicy(client: Client | undefined): ClientPolicy {
  const metadata = (client ?? {}) as ClientPolicyMetadata;
  return {
    requireMfa: metadata.require_mfa === true,
    firstParty: metadata.first_party === true,
    idTokenClaims: metadata.id_token_claims ?? 'full',
    introspectFor: metadata.introspect_for ?? [],
    registeredDynamically: metadata.registered_dynamically === true,
  };
}
