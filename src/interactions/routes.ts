/**
 * Hosted login and consent. oidc-provider sends the browser to GET /interaction/:uid; the prompt
 * it needs (login or consent) picks the page, and each form posts to its own action, which ends
 * by handing a result back to oidc-provider and redirecting to where it resumes the request.
 * Consent is asked once per account and client (the grant is kept, see loadExistingGrant in
 * src/oidc/provider.ts), and never for first-party clients. The first consent to an app is
 * usually asked on the password's own interaction (first-consent.ts).
 * @see node-oidc-provider example/routes/koa.js
 */
import Router from '@koa/router';
import { formBody } from '../http/form-body.ts';
import type { Context } from 'koa';
import { errors, type Interaction, type InteractionResults, type Provider } from 'oidc-provider';
import { z } from 'zod';
import { normalizeEmail, type AccountService } from '../accounts/service.ts';
import { PASSWORD_MAX_LENGTH } from '../accounts/password.ts';
import { AppError } from '../http/errors.ts';
import type { Logger } from '../observability/logger.ts';
import type { ArtifactStore } from '../../adapters/mongodb.ts';
import { ACR_PASSWORD, acrDemand, reportedAcr } from '../oidc/acr.ts';
import { clientPolicy } from '../oidc/client-metadata.ts';
import { isDocumentsScope, KNOWN_GRANT, SCOPE_DESCRIPTIONS } from '../oidc/provider.ts';
import { csrf } from '../security/csrf.ts';
import type { Lockout } from '../security/lockout.ts';
import type { Config } from '../config.ts';
import type { MfaService } from '../accounts/mfa.ts';
import type { MfaChallenges } from './mfa-challenges.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { SignInMethod, SignInRecorder } from '../audit/sign-ins.ts';
import { RateLimitedError, type RateLimits } from '../security/rate-limit.ts';
import { firstConsent } from './first-consent.ts';
import { secondStep } from './second-step.ts';

/** Shared by both the wrong-password and unknown-email answers, word for word. */
export const LOGIN_FAILED = 'The email or password is incorrect.';

/** The metrics' name for what finished a sign-in, from its RFC 8176 amr. */
function signInMethod(amr: readonly string[] | undefined): SignInMethod {
  if (amr?.includes('otp')) return 'totp';
  return amr?.includes('mfa') ? 'recovery_code' : 'password';
}

// Strict objects: unknown keys (including "$"-prefixed operators) fail validation.
const loginForm = z.object({
  _csrf: z.string(),
  email: z.string().min(1).max(254),
  password: z.string().min(1).max(PASSWORD_MAX_LENGTH),
}).strict();

const consentForm = z.object({ _csrf: z.string(), decision: z.enum(['allow', 'deny']) }).strict();

function partition<T>(items: readonly T[], test: (item: T) => boolean): [T[], T[]] {
  return [items.filter(test), items.filter((item) => !test(item))];
}

export interface InteractionDeps {
  provider: Provider;
  store: ArtifactStore;
  accounts: AccountService;
  logger: Logger;
  config: Config;
  rateLimits: RateLimits;
  lockout: Lockout;
  mfa: MfaService;
  challenges: MfaChallenges;
  metrics: Metrics;
  /** Counts and audits every sign-in attempt. */
  signIns: SignInRecorder;
}

type ConsentDetails = { missingOIDCScope?: string[]; missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]> };

export function interactionRoutes(deps: InteractionDeps): Router {
  const { provider, accounts, logger, config, rateLimits, lockout, metrics, signIns } = deps;
  const router = new Router({ prefix: '/interaction' });

  // Small limits: a login form is well under 1 kB, and large bodies are refused (413) before
  // anything is parsed or hashed.
  router.use(formBody({ json: true, limit: '8kb' }));
  router.use(async (ctx, next) => {
    ctx.set('Cache-Control', 'no-store');
    try {
      await next();
    } catch (error) {
      if (error instanceof errors.SessionNotFound) {
        throw new AppError('interaction_expired', 'This sign-in attempt has expired or was already completed. Return to the application and start again.', 400);
      }
      throw error;
    }
  });
  router.use(csrf({ secure: config.secureTransport }));

  /**
   * Records the result on the interaction already loaded for this request and sends the browser
   * back to oidc-provider. Same as provider.interactionResult(), minus loading the interaction
   * and its session a second time.
   */
  async function finish(ctx: Context, interaction: Interaction, result: InteractionResults): Promise<void> {
    interaction.result = result;
    await interaction.save(interaction.exp - Math.floor(Date.now() / 1000));
    ctx.status = 303;
    ctx.redirect(interaction.returnTo);
  }

  async function renderLogin(ctx: Context, uid: string, clientId: unknown, error?: string, email = ''): Promise<void> {
    const client = typeof clientId === 'string' ? await provider.Client.find(clientId) : undefined;
    await ctx.render('login', {
      title: 'Sign in', uid, clientName: client?.clientName, error, email, registration: config.accounts.registrationEnabled,
    });
  }

  const first = firstConsent(deps);

  /**
   * A login done (the password, or the password and its second step): asks the first consent on
   * this interaction when that is plain (first-consent.ts), or hands the login to oidc-provider.
   */
  async function finishLogin(ctx: Context, interaction: Interaction, login: NonNullable<InteractionResults['login']>): Promise<void> {
    await signIns.succeeded(ctx, { clientId: interaction.params.client_id, accountId: login.accountId, method: signInMethod(login.amr) });
    const decision = await first.decide(interaction, login.accountId);
    if (!decision || 'known' in decision) return finish(ctx, interaction, { login, ...(decision ? { [KNOWN_GRANT]: decision.known } : {}) });
    const client = await provider.Client.find(String(interaction.params.client_id));
    if (clientPolicy(client).firstParty) return finish(ctx, interaction, await first.grant(interaction, login, decision.ask));
    await first.hold(interaction, login, decision.ask);
    ctx.status = 303;
    ctx.redirect(`/interaction/${interaction.uid}`);
  }

  const second = secondStep({ ...deps, finishLogin });
  second.routes(router);

  async function renderConsent(ctx: Context, uid: string, clientName: string | undefined, scopes: string[]): Promise<void> {
    await ctx.render('consent', {
      title: 'Allow access',
      uid,
      clientName: clientName ?? 'An application',
      scopes: scopes.map((scope) => ({ scope, description: SCOPE_DESCRIPTIONS[scope] ?? scope })),
    });
  }

  /**
   * Why this sign-in must wait, if it must: too many attempts of any outcome from the address (a
   * flood), too many failures from the address or for the email, or the email's lockout. Every
   * attempt is counted before it is judged and refunded once it succeeds (signInSucceeded), so
   * people who sign in correctly are never refused, however many share an address, while parallel
   * guesses cannot slip under the limit. Keyed by the submitted email whether or not it has an
   * account, so a refusal says nothing about which emails exist.
   */
  async function signInRefusal(ip: string, email: string | undefined): Promise<RateLimitedError | undefined> {
    const waits = await Promise.all([
      rateLimits.wait('signinAttemptsPerIp', ip),
      rateLimits.wait('signinPerIp', ip),
      ...(email === undefined ? [] : [rateLimits.wait('signinPerAccount', email), lockout.lockedFor(email)]),
    ]);
    const wait = Math.max(...waits);
    return wait > 0 ? new RateLimitedError(wait) : undefined;
  }

  /** A correct password: the failure counts it was charged to are given back, the lockout cleared. */
  async function signInSucceeded(ip: string, email: string): Promise<void> {
    await Promise.all([rateLimits.refund('signinPerIp', ip), rateLimits.refund('signinPerAccount', email), lockout.recordSuccess(email)]);
  }

  /** Records consent for what the prompt is missing, on the account's one grant for this client. */
  async function grantConsent(interaction: Interaction): Promise<InteractionResults> {
    const { params, session, grantId, prompt } = interaction;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session!.accountId, clientId: String(params.client_id) });
    if (!grant) throw new errors.SessionNotFound('grant not found');
    const details = prompt.details as ConsentDetails;
    if (details.missingOIDCScope) {
      // The documents scopes are granted per resource (below), never as OIDC scopes; rejecting
      // them here records the decision, so consent is not asked again for them.
      const [documentsScopes, oidcScopes] = partition(details.missingOIDCScope, isDocumentsScope);
      if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
      if (documentsScopes.length) grant.rejectOIDCScope(documentsScopes.join(' '));
    }
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const savedGrantId = await grant.save();
    return { consent: grantId ? {} : { grantId: savedGrantId } };
  }

  router.get('/:uid', async (ctx) => {
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, params, session } = interaction;
    if (uid !== ctx.params.uid) throw new errors.SessionNotFound('interaction mismatch');
    const client = await provider.Client.find(String(params.client_id));
    if (prompt.name === 'login') {
      // Core 5.5.1.1: an essential acr this provider can never reach fails the request.
      if (acrDemand(params.claims, client) === 'unreachable') {
        return finish(ctx, interaction, { error: 'access_denied', error_description: 'none of the requested authentication context classes is available' });
      }
      if (await second.resume(ctx, uid, params.client_id)) return;
      const pending = first.pending(interaction);
      if (pending) return renderConsent(ctx, uid, client?.clientName, pending.consent.scopes);
      // Core 3.1.2.1: login_hint fills in the email the relying party already knows.
      const hint = typeof params.login_hint === 'string' && params.login_hint.length <= 254 ? params.login_hint : '';
      return renderLogin(ctx, uid, params.client_id, undefined, hint);
    }
    if (prompt.name !== 'consent' || !session) throw new AppError('unsupported_prompt', 'This request needs a step this server does not offer.', 400);
    // First-party apps are part of this provider: what they ask for is granted without a question.
    if (clientPolicy(client).firstParty) return finish(ctx, interaction, await grantConsent(interaction));

    const details = prompt.details as ConsentDetails;
    // The documents scopes also count as OIDC scopes to oidc-provider; only those the API will
    // actually grant (its resource scopes) are shown, so nobody is asked for documents:admin in vain.
    const oidcScopes = (details.missingOIDCScope ?? []).filter((scope) => !isDocumentsScope(scope));
    const missing = [...new Set([...oidcScopes, ...Object.values(details.missingResourceScopes ?? {}).flat()])];
    // prompt=consent with everything granted already: confirm what the request asks for.
    const scopes = missing.length ? missing : String(params.scope ?? '').split(' ').filter((scope) => scope && !isDocumentsScope(scope));
    await renderConsent(ctx, uid, client?.clientName, scopes);
  });

  router.post('/:uid/login', async (ctx) => {
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, params } = interaction;
    if (uid !== ctx.params.uid || prompt.name !== 'login') throw new errors.SessionNotFound('interaction mismatch');

    const form = loginForm.safeParse(ctx.request.body);
    const email = form.success ? normalizeEmail(form.data.email) : undefined;
    // Checked before any hashing, so refused attempts cost no argon2 work.
    const refusal = await signInRefusal(ctx.ip, email);
    if (refusal) {
      logger.info({ uid, retryAfter: refusal.retryAfterSeconds }, 'sign-in refused: too many attempts');
      await signIns.refused(ctx, { clientId: params.client_id, step: 'password', email });
      ctx.status = 429;
      ctx.set('Retry-After', String(refusal.retryAfterSeconds));
      return renderLogin(ctx, uid, params.client_id, refusal.message, form.success ? form.data.email : '');
    }
    // A malformed submission (missing field, object or array where text belongs, operator
    // injection) is a failed sign-in like any other; no hashing is done for it.
    const signedIn = form.success ? await accounts.signIn(form.data.email, form.data.password) : undefined;
    const accountId = signedIn?.id;
    if (!signedIn || !accountId || email === undefined) {
      // Counted for unknown emails too: a lock then says nothing about the account, and both
      // answers take the same work (and time).
      const lockSeconds = email === undefined ? 0 : await lockout.recordFailure(email);
      logger.info({ uid, reason: form.success ? 'bad_credentials' : 'malformed_form', lockSeconds }, 'sign-in failed');
      await signIns.failed(ctx, { clientId: params.client_id, step: 'password', email, reason: form.success ? 'invalid_credentials' : 'malformed_form' });
      if (lockSeconds > 0) metrics.lockouts.inc({ step: 'password' });
      ctx.status = 401;
      return renderLogin(ctx, uid, params.client_id, LOGIN_FAILED, form.success ? form.data.email : '');
    }
    await signInSucceeded(ctx.ip, email);

    if (config.accounts.requireVerifiedEmail && !signedIn.emailVerified) {
      // Only after the right password, so it tells nothing to someone who does not have it.
      ctx.status = 403;
      return renderLogin(ctx, uid, params.client_id, 'Verify your email address first: follow the link we sent you, or ask for a new one at /verify-email/resend.', email);
    }
    // A consent held for an earlier password on this interaction (perhaps another account's) ends here.
    await first.drop(interaction);
    if (signedIn.mfaEnabled) return second.begin(ctx, uid, accountId, params.client_id, false);
    // The application demands a second factor this account does not have: set it up in place.
    const client = await provider.Client.find(String(params.client_id));
    if (acrDemand(params.claims, client) === 'mfa') return second.begin(ctx, uid, accountId, params.client_id, true);
    logger.info({ uid, accountId }, 'sign-in succeeded');
    // ts: when the password was given, which auth_time reports (the consent may come later).
    await finishLogin(ctx, interaction, { accountId, amr: ['pwd'], acr: reportedAcr(ACR_PASSWORD, params.claims), ts: Math.floor(Date.now() / 1000) });
  });

  router.post('/:uid/consent', async (ctx) => {
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, session } = interaction;
    const pending = prompt.name === 'login' ? first.pending(interaction) : undefined;
    if (uid !== ctx.params.uid || !(pending || (prompt.name === 'consent' && session))) throw new errors.SessionNotFound('interaction mismatch');

    const form = consentForm.safeParse(ctx.request.body);
    if (!form.success) throw new AppError('invalid_form', 'Choose Allow or Deny.', 400);
    if (form.data.decision === 'deny') {
      return finish(ctx, interaction, { error: 'access_denied', error_description: 'The user denied the request' });
    }
    await finish(ctx, interaction, pending ? await first.grant(interaction, pending.login, pending.consent.scopes) : await grantConsent(interaction));
  });

  return router;
}
