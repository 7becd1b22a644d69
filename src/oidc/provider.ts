/**
 * oidc-provider configuration. Departures from the library's defaults, and why:
 * - devInteractions off: the built-in pages accept any password.
 * - responseTypes ['code'] only: implicit and hybrid flows stay off (OAuth 2.1 / BCP 212).
 * - PKCE (S256) required for every client unless PKCE_REQUIRED_FOR_CONFIDENTIAL_CLIENTS=false.
 * - rotateRefreshToken always: a reused refresh token then revokes the whole grant.
 * - allowOmittingSingleRegisteredRedirectUri false: redirect_uri is always sent and matched exactly.
 * - ES256 signs ID tokens by default (see keys.ts).
 * @see https://github.com/panva/node-oidc-provider/blob/main/docs/README.md
 */
import { errors, interactionPolicy, Provider, type Client, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import type { ArtifactStore } from '../../adapters/mongodb.ts';
import type { AccountService } from '../accounts/service.ts';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import type { PrivateJwks } from './keys.ts';

export const SCOPES = ['openid', 'offline_access', 'profile', 'email', 'roles'] as const;

/** Scopes of the documents API (a resource server, so not OIDC scopes). */
export const DOCUMENTS_SCOPES = ['documents:read', 'documents:write', 'documents:admin'] as const;
/** Authentication context classes (the `acr` claim): password alone, or password and a second factor. */
export const ACR_PASSWORD = 'urn:oidc-idp:acr:pwd';
export const ACR_MFA = 'urn:oidc-idp:acr:mfa';

/** The provider's own account pages sign in through the provider like any client (src/accounts/account-pages.ts). */
export const ACCOUNT_CONSOLE_CLIENT_ID = 'account-console';

/** Whether this authorization request must end with two-step verification. */
export function mfaRequired(params: Record<string, unknown> | undefined, client: Client | undefined): boolean {
  const acrValues = typeof params?.acr_values === 'string' ? params.acr_values.split(' ') : [];
  return acrValues.includes(ACR_MFA) || (client as { require_mfa?: unknown } | undefined)?.require_mfa === true;
}

/**
 * oidc-provider's default prompts, plus: a session signed in with the password alone does not
 * satisfy a request that requires two-step verification, so it is asked to sign in again.
 */
function interactionPolicyWithMfa() {
  const policy = interactionPolicy.base();
  policy.get('login')!.checks.add(new interactionPolicy.Check('mfa_required', 'two-step verification is required', (ctx) => {
    const { oidc } = ctx;
    const satisfied = oidc.session?.acr === ACR_MFA || oidc.result?.login !== undefined;
    return oidc.session?.accountId && !satisfied && mfaRequired(oidc.params, oidc.client)
      ? interactionPolicy.Check.REQUEST_PROMPT
      : interactionPolicy.Check.NO_NEED_TO_PROMPT;
  }));
  return policy;
}

/** documents:admin is only ever granted to accounts holding this role. */
export const ADMIN_ROLE = 'admin';

export const SCOPE_DESCRIPTIONS: Record<string, string> = {
  openid: 'Sign you in with your account',
  'documents:read': 'Read your documents and the documents shared with you',
  'documents:write': 'Create, change, share and delete your documents',
  'documents:admin': 'Read and manage every document (administrators)',
  profile: 'See your name',
  email: 'See your email address and whether it is verified',
  roles: 'See the roles you hold',
  offline_access: 'Stay connected when you are not using the app',
};

export interface ProviderDeps {
  config: Config;
  store: ArtifactStore;
  accounts: AccountService;
  jwks: PrivateJwks;
  cookieKeys: readonly string[];
  logger: Logger;
}

export const isDocumentsScope = (scope: string) => (DOCUMENTS_SCOPES as readonly string[]).includes(scope);

/**
 * The documents API scopes this request may obtain: those the client is registered for, minus
 * documents:admin unless an end user holding the admin role is known to be behind the request.
 * Before sign-in the user is unknown, so admin is left out; oidc-provider asks again when the
 * authorization request resumes after login, and at the token endpoint (refreshes included, so
 * losing the role also takes the scope out of the next access token).
 */
async function documentsScopesFor(ctx: KoaContextWithOIDC, client: Client, accounts: AccountService): Promise<string[]> {
  const registered = (client.scope ?? '').split(' ').filter(isDocumentsScope);
  if (!registered.includes('documents:admin')) return registered;
  const accountId = ctx.oidc.account?.accountId ?? ctx.oidc.session?.accountId;
  const isAdmin = accountId !== undefined && ctx.oidc.params?.grant_type !== 'client_credentials'
    && await accounts.hasRole(accountId, ADMIN_ROLE);
  return isAdmin ? registered : registered.filter((scope) => scope !== 'documents:admin');
}

type Render = (view: string, locals: Record<string, unknown>) => Promise<void>;

/** Pages are rendered by koa-views on the outer app; mounting shares its ctx with the provider. */
function render(ctx: KoaContextWithOIDC): Render {
  return (ctx as unknown as { render: Render }).render;
}

export function createProvider({ config, store, accounts, jwks, cookieKeys, logger }: ProviderDeps): Provider {
  const cookie = { httpOnly: true, sameSite: 'lax' as const, secure: config.secureTransport };

  const configuration: Configuration = {
    adapter: (name: string) => store.adapterFor(name),
    clients: [],
    jwks,
    findAccount: (_ctx, id) => accounts.findAccount(id),
    cookies: { keys: [...cookieKeys], long: cookie, short: cookie },
    // The API's scopes are listed too: oidc-provider only lets a client register (and request)
    // scopes from this list. Which of them a token actually carries is decided per resource by
    // getResourceServerInfo below.
    scopes: [...SCOPES, ...DOCUMENTS_SCOPES],
    claims: {
      // oidc-provider's standalone defaults, kept when replacing the map.
      acr: null, auth_time: null, sid: null, iss: null,
      // How the user signed in travels with `openid`, so every ID token says it (RFC 8176 amr;
      // acr is ACR_PASSWORD or ACR_MFA), not only those that ask with the claims parameter.
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      profile: ['name', 'updated_at'],
      email: ['email', 'email_verified'],
      roles: ['roles'],
    },
    responseTypes: ['code'],
    pkce: {
      required: (_ctx, client) => client.clientAuthMethod === 'none' || config.pkceRequiredForConfidentialClients,
    },
    rotateRefreshToken: true,
    allowOmittingSingleRegisteredRedirectUri: false,
    clockTolerance: 5,
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
    },
    enabledJWA: {
      idTokenSigningAlgValues: ['ES256', 'EdDSA', 'RS256'],
      userinfoSigningAlgValues: ['ES256', 'EdDSA', 'RS256'],
      introspectionSigningAlgValues: ['ES256', 'EdDSA', 'RS256'],
    },
    ttl: {
      AccessToken: config.ttl.accessToken,
      AuthorizationCode: config.ttl.authorizationCode,
      ClientCredentials: config.ttl.clientCredentials,
      IdToken: config.ttl.idToken,
      RefreshToken: config.ttl.refreshToken,
      Session: config.ttl.session,
      Interaction: config.ttl.interaction,
      Grant: config.ttl.grant,
    },
    interactions: {
      policy: interactionPolicyWithMfa(),
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    acrValues: [ACR_PASSWORD, ACR_MFA],
    // `require_mfa`: the client only accepts sign-ins with a second factor (`client update --require-mfa`).
    extraClientMetadata: {
      properties: ['require_mfa'],
      validator: (_ctx, key, value) => {
        if (key === 'require_mfa' && value !== undefined && typeof value !== 'boolean') {
          throw new errors.InvalidClientMetadata('require_mfa must be true or false');
        }
      },
    },
    // The account pages are part of the provider: signing in to them needs no consent screen.
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session!.grantIdFor(ctx.oidc.client!.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      if (ctx.oidc.client!.clientId !== ACCOUNT_CONSOLE_CLIENT_ID || !ctx.oidc.session?.accountId) return undefined;
      const grant = new ctx.oidc.provider.Grant({ clientId: ACCOUNT_CONSOLE_CLIENT_ID, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid');
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: false },
      // RFC 8707 + RFC 9068: tokens for the documents API are JWTs with the API as audience.
      resourceIndicators: {
        enabled: true,
        // A request for documents scopes without `resource` is meant for the API, so plain OIDC
        // client libraries work unchanged. When a grant covers several resources, prefer the API.
        defaultResource: async (ctx, _client, oneOf) => {
          if (oneOf) return oneOf.includes(config.documents.audience) ? config.documents.audience : oneOf;
          const requested = String(ctx.oidc.params?.scope ?? '').split(' ');
          return requested.some(isDocumentsScope) ? config.documents.audience : undefined;
        },
        // The API's token is what a client that was granted it asked for; the ID token then
        // carries the profile claims (oidc-provider does that when the token has an audience).
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator, client) => {
          if (indicator !== config.documents.audience) throw new errors.InvalidTarget('unknown resource indicator');
          const scopes = await documentsScopesFor(ctx, client, accounts);
          if (scopes.length === 0) throw new errors.InvalidTarget('this client is not registered for the documents API');
          return {
            audience: config.documents.audience,
            scope: scopes.join(' '),
            // Lifetime: TTL_ACCESS_TOKEN for users, TTL_CLIENT_CREDENTIALS for clients (ttl above).
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Confidential clients are resource servers and may introspect any token; a public
        // client may only look at its own.
        allowedPolicy: async (_ctx, client, token) =>
          client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          // `form` is oidc-provider's own form with its xsrf token; the template only places it.
          await render(ctx)('logout', { title: 'Sign out', logoutForm: form, clientName: ctx.oidc.client?.clientName });
        },
        postLogoutSuccessSource: async (ctx) => {
          await render(ctx)('logged-out', { title: 'Signed out', clientName: ctx.oidc.client?.clientName });
        },
      },
    },
    renderError: async (ctx, out, error) => {
      logger.info({ err: { name: error.name, message: error.message }, error: out.error }, 'oidc error page');
      ctx.type = 'html';
      await render(ctx)('error', {
        title: 'Something went wrong',
        heading: 'The sign-in request could not be completed',
        message: out.error_description ?? 'Please return to the application and try again.',
        code: out.error,
      });
    },
  };

  const provider = new Provider(config.issuer, configuration);
  provider.proxy = config.trustProxy;
  provider.on('server_error', (_ctx, error) => logger.error({ err: error }, 'oidc-provider server error'));
  // Expected client mistakes (invalid_grant, ...): worth a line, never a stack or a token.
  const refused = (event: string) => (_ctx: unknown, error: Error & { error_description?: string }) =>
    logger.info({ event, error: error.message, detail: error.error_description }, 'oidc request refused');
  provider.on('grant.error', refused('grant.error'));
  provider.on('introspection.error', refused('introspection.error'));
  provider.on('revocation.error', refused('revocation.error'));
  provider.on('end_session.error', refused('end_session.error'));
  return provider;
}
