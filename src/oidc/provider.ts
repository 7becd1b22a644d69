/**
 * oidc-provider configuration. Departures from the library's defaults, and why:
 * - devInteractions off: the built-in pages accept any password.
 * - responseTypes ['code'] only: implicit and hybrid flows stay off (OAuth 2.1 / BCP 212).
 * - PKCE (S256) required for every client; a confidential client may be registered without it
 *   (`pkce_required: false`), and PKCE_REQUIRED_FOR_CONFIDENTIAL_CLIENTS=false changes the default.
 * - rotateRefreshToken always: a reused refresh token then revokes the whole grant.
 * - allowOmittingSingleRegisteredRedirectUri false: redirect_uri is always sent and matched exactly.
 * - ES256 signs ID tokens by default (see keys.ts).
 * - conformIdTokenClaims false: the claims of the granted scopes go into the ID token as well as
 *   userinfo, because many relying parties read them only there; a client registered with
 *   `id_token_claims: minimal` gets them from userinfo only.
 * - enableHttpPostMethods: /auth and /session/end accept POST (Core 3.1.2.1, RP-Initiated Logout
 *   2); see sessionCookies below for what that asks of the cookies.
 * - one grant per account and client, kept across sessions and sign-outs (loadExistingGrant,
 *   revokeGrantPolicy), so consent is asked once.
 * @see https://github.com/panva/node-oidc-provider/blob/main/docs/README.md
 */
import { decodeJwt } from 'jose';
import { errors, interactionPolicy, Provider, type Client, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import type { ArtifactStore, StoredGrant } from '../../adapters/mongodb.ts';
import { opaqueTokenBits } from '../../adapters/token-ids.ts';
import { ACR_MFA, ACR_VALUES, acrDemand } from './acr.ts';
import { clientPolicy, extraClientMetadata } from './client-metadata.ts';
import { deviceFlowPages, USER_CODE_MASK } from '../devices/pages.ts';
import type { AccountService } from '../accounts/service.ts';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import type { PrivateJwks } from './keys.ts';
import type { ClientRegistration } from './registration.ts';
import { DPOP_ALGORITHMS } from '../documents/dpop.ts';
import { guardAdapter, rethrowAsProviderError } from './unavailable.ts';

export const SCOPES = ['openid', 'offline_access', 'profile', 'email', 'roles'] as const;

/** How long a device's user code (and its device code) can be used. */
export const DEVICE_CODE_TTL_SECONDS = 10 * 60;
export { ACR_MFA, ACR_PASSWORD } from './acr.ts';

/** OpenID Connect Core 5.4: the standard claims of the profile scope that accounts hold. */
export const PROFILE_CLAIMS = [
  'name', 'given_name', 'family_name', 'preferred_username', 'nickname', 'picture', 'website', 'locale', 'zoneinfo', 'updated_at',
] as const;

/** Scopes of the documents API (a resource server, so not OIDC scopes). */
export const DOCUMENTS_SCOPES = ['documents:read', 'documents:write', 'documents:admin'] as const;

/** The provider's own account pages sign in through the provider like any client (src/accounts/account-pages.ts). */
export const ACCOUNT_CONSOLE_CLIENT_ID = 'account-console';

/**
 * oidc-provider's default prompts, plus: a session signed in with the password alone does not
 * satisfy a request that requires two-step verification, so it is asked to sign in again.
 */
function interactionPolicyWithMfa() {
  const policy = interactionPolicy.base();
  policy.get('login')!.checks.add(new interactionPolicy.Check('mfa_required', 'two-step verification is required', (ctx) => {
    const { oidc } = ctx;
    const satisfied = oidc.session?.acr === ACR_MFA || oidc.result?.login !== undefined;
    return oidc.session?.accountId && !satisfied && acrDemand(oidc.claims, oidc.client) === 'mfa'
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
  profile: 'See your name and profile (picture, username, language, time zone)',
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
  /** Verifies a JWT access token of the documents API (signature, claims, revocation); throws if invalid. */
  verifyAccessToken: (token: string) => Promise<unknown>;
  /** The policy and ids of dynamic client registration (registration.ts). */
  registration: Pick<ClientRegistration, 'policies' | 'idFactory'>;
}

/**
 * On a login result when the account has a grant to the app already: the grant as the login page's
 * answer read it to decide (src/interactions/first-consent.ts), so that the resume, which loads it
 * in loadExistingGrant below, does not read it again.
 */
export const KNOWN_GRANT = 'knownGrant';

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

/** Pages are rendered by the outer app's views (src/http/views.ts); mounting shares its ctx with the provider. */
function render(ctx: KoaContextWithOIDC): Render {
  return (ctx as unknown as { render: Render }).render;
}

/**
 * POST to /auth and /session/end comes from the relying party's page, a cross-site request, so
 * oidc-provider insists that its session cookie (the long one) is SameSite=None, and browsers
 * accept SameSite=None only with Secure. That works on https issuers and on loopback http ones
 * (browsers take Secure cookies from http://localhost); on any other http issuer (development
 * only) POST stays off and the cookie stays Lax. The short-lived interaction cookies stay Lax:
 * they are only read on our own pages, after a top-level redirect.
 */
function sessionCookies(issuer: string) {
  const url = new URL(issuer);
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
  const postAllowed = url.protocol === 'https:' || loopback;
  const short = { httpOnly: true, sameSite: 'lax' as const, secure: url.protocol === 'https:' };
  const long = postAllowed ? { httpOnly: true, sameSite: 'none' as const, secure: true } : short;
  return { postAllowed, insecureLoopback: postAllowed && url.protocol === 'http:', long, short };
}

/** Whether a token may be described to `client`: its own tokens, or tokens for an audience it serves. */
function mayIntrospect(client: Client, token: { clientId?: string; aud?: unknown }): boolean {
  if (token.clientId === client.clientId) return true;
  const audiences = Array.isArray(token.aud) ? token.aud : typeof token.aud === 'string' ? [token.aud] : [];
  const servedAudiences = clientPolicy(client).introspectFor;
  return client.clientAuthMethod !== 'none' && audiences.some((aud) => servedAudiences.includes(aud));
}

/**
 * oidc-provider answers introspection of a JWT access token with 400 unsupported_token_type
 * before its allowedPolicy runs (it stores no JWTs to look up). The documents API's tokens are
 * JWTs, and resource servers registered for it (`introspect_for`) may ask about them: after the
 * route has authenticated the calling client, such a token is verified here and described to
 * that client alone, and anyone else is told `active: false` (RFC 7662 section 2.2).
 */
function introspectJwtAccessTokens(verify: ProviderDeps['verifyAccessToken']): Parameters<Provider['use']>[0] {
  return async (ctx, next) => {
    await next();
    const oidc = (ctx as unknown as { oidc?: KoaContextWithOIDC['oidc'] }).oidc;
    if (oidc?.route !== 'introspection' || !oidc.client || (ctx.body as { error?: unknown } | undefined)?.error !== 'unsupported_token_type') return;
    const token = String(oidc.params?.token ?? '');
    const valid = await verify(token).then(() => true, () => false);
    const claims = valid ? decodeJwt(token) : undefined;
    const described = claims && mayIntrospect(oidc.client, { clientId: String(claims.client_id), aud: claims.aud });
    ctx.status = 200;
    const tokenType = (claims?.cnf as { jkt?: unknown } | undefined)?.jkt ? 'DPoP' : 'Bearer';
    ctx.body = described ? { ...claims, active: true, token_type: tokenType } : { active: false };
  };
}

/**
 * RFC 9449 section 5.2: a client registered with dpop_bound_access_tokens (--require-dpop) must
 * send a proof to /token. oidc-provider refuses a request without one as invalid_grant, which
 * tells a client that its code or refresh token is bad (and some then throw a good refresh token
 * away); the request lacks its proof, so it is answered invalid_dpop_proof.
 */
function dpopRequiredAsProofError(): Parameters<Provider['use']>[0] {
  return async (ctx, next) => {
    await next();
    const oidc = (ctx as unknown as { oidc?: KoaContextWithOIDC['oidc'] }).oidc;
    if (oidc?.route !== 'token' || (ctx.body as { error?: unknown } | undefined)?.error !== 'invalid_grant') return;
    if (oidc.client?.dpopBoundAccessTokens && !ctx.get('dpop')) {
      ctx.body = { error: 'invalid_dpop_proof', error_description: 'this client must send a DPoP proof (RFC 9449)' };
    }
  };
}

export function createProvider({ config, store, accounts, jwks, cookieKeys, logger, verifyAccessToken, registration }: ProviderDeps): Provider {
  const cookies = sessionCookies(config.issuer);

  const configuration: Configuration = {
    adapter: (name: string) => guardAdapter(store.adapterFor(name)),
    clients: [],
    jwks,
    findAccount: async (ctx, id) => {
      const account = await accounts.findAccount(id).catch(rethrowAsProviderError);
      if (!account || clientPolicy(ctx.oidc.client).idTokenClaims === 'full') return account;
      // id_token_claims: minimal. acr, amr, auth_time and sid are added by oidc-provider itself.
      return { ...account, claims: async (use, ...rest) => (use === 'id_token' ? { sub: id } : account.claims(use, ...rest)) };
    },
    cookies: { keys: [...cookieKeys], long: cookies.long, short: cookies.short },
    enableHttpPostMethods: cookies.postAllowed,
    // Token ids whose length names their model, so a lookup asks one collection (token-ids.ts).
    formats: { bitsOfOpaqueRandomness: (_ctx, token) => opaqueTokenBits(token.kind) },
    conformIdTokenClaims: false,
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
      profile: [...PROFILE_CLAIMS],
      email: ['email', 'email_verified'],
      roles: ['roles'],
    },
    responseTypes: ['code'],
    pkce: {
      required: (_ctx, client) => {
        const registered = (client as { pkce_required?: boolean }).pkce_required;
        return client.clientAuthMethod === 'none' || (registered ?? config.pkceRequiredForConfidentialClients);
      },
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
      dPoPSigningAlgValues: [...DPOP_ALGORITHMS],
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
      // RFC 8628: long enough to walk to a phone and sign in; the user code is short-lived on purpose.
      DeviceCode: DEVICE_CODE_TTL_SECONDS,
    },
    interactions: {
      policy: interactionPolicyWithMfa(),
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    acrValues: [...ACR_VALUES],
    extraClientMetadata,
    // One grant per account and client: a new session finds the consent given in an earlier one.
    loadExistingGrant: async (ctx) => {
      const { client, session, result } = ctx.oidc;
      // Read by the login page's answer just before (src/interactions/first-consent.ts).
      const known = result?.[KNOWN_GRANT] as StoredGrant | undefined;
      if (known) store.rememberGrant(known);
      const grantId = result?.consent?.grantId ?? session!.grantIdFor(client!.clientId) ?? known?.id
        ?? (session?.accountId ? await store.grantIdFor(session.accountId, client!.clientId).catch(rethrowAsProviderError) : undefined);
      const grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      // A grant is only ever used for the account and client it was given by.
      return grant && grant.accountId === session?.accountId && grant.clientId === client!.clientId ? grant : undefined;
    },
    // Signing out of an app (or everywhere) ends its stored tokens but keeps the consent; reusing
    // a code or a refresh token, or revoking a refresh token, still ends the whole grant. JWT
    // access tokens are not stored: they end with "remove access", "sign out everywhere" or a
    // client's revocation (src/oidc/revocations.ts), or when they expire.
    revokeGrantPolicy: (ctx) => !String(ctx.oidc.route).startsWith('end_session')
      && !(ctx.oidc.route === 'revocation' && ctx.oidc.entities.AccessToken),
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
      // RFC 9449: a client that sends a DPoP proof to /token gets tokens bound to its key (token_type
      // DPoP, cnf.jkt in the documents API's JWTs, a public client's refresh token bound too);
      // `dpop_bound_access_tokens` (client --require-dpop) makes the proof mandatory. No server
      // nonces; replayed proofs are refused through ReplayDetection (our adapter).
      dPoP: { enabled: true, requireNonce: () => false, allowReplay: false },
      // RFC 7591/7592, off unless CLIENT_REGISTRATION_ENABLED: only with an initial access token
      // from `client registration-token create`, under the registry's rules (registration.ts).
      registration: {
        enabled: config.clientRegistration.enabled,
        initialAccessToken: true,
        policies: registration.policies,
        idFactory: registration.idFactory,
        issueRegistrationAccessToken: true,
      },
      registrationManagement: { enabled: config.clientRegistration.enabled, rotateRegistrationAccessToken: true },
      // Essential claims (Core 5.5), an essential acr among them.
      claimsParameter: { enabled: true },
      introspection: {
        enabled: true,
        // RFC 7662 section 4: anyone else is told only `active: false`.
        allowedPolicy: async (_ctx, client, token) => mayIntrospect(client, token as { clientId?: string; aud?: unknown }),
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
      // Back-Channel Logout 1.0: the metadata and discovery are oidc-provider's; delivery, with
      // retries, is ours (src/logout/propagation.ts).
      backchannelLogout: { enabled: true },
      // RFC 8628 on /device (oidc-provider's default route), with our pages (src/devices/pages.ts)
      // and the typed codes rate limited per address (src/devices/rate-limit.ts).
      deviceFlow: { enabled: true, charset: 'base-20', mask: USER_CODE_MASK, ...deviceFlowPages },
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
  provider.use(introspectJwtAccessTokens(verifyAccessToken));
  provider.use(dpopRequiredAsProofError());
  // Browsers accept Secure cookies from http://localhost, but the cookies library refuses to set
  // them on a plain-http request unless the request counts as secure; oidc-provider reads only
  // `ctx.secure` for that, and only for its cookies.
  if (cookies.insecureLoopback) {
    provider.use(async (ctx, next) => {
      Object.defineProperty(ctx.request, 'secure', { value: true, configurable: true });
      await next();
    });
  }
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
