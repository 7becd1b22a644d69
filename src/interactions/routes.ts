/**
 * Hosted login and consent. oidc-provider sends the browser to GET /interaction/:uid; the prompt
 * it needs (login or consent) picks the page, and each form posts to its own action, which ends
 * by handing a result back to oidc-provider and redirecting to where it resumes the request.
 * @see node-oidc-provider example/routes/koa.js
 */
import Router from '@koa/router';
import { bodyParser } from '@koa/bodyparser';
import type { Context } from 'koa';
import { errors, type Interaction, type InteractionResults, type Provider } from 'oidc-provider';
import { z } from 'zod';
import { normalizeEmail, type AccountService } from '../accounts/service.ts';
import { PASSWORD_MAX_LENGTH } from '../accounts/password.ts';
import { AppError } from '../http/errors.ts';
import type { Logger } from '../observability/logger.ts';
import { ACR_MFA, ACR_PASSWORD, isDocumentsScope, mfaRequired, SCOPE_DESCRIPTIONS } from '../oidc/provider.ts';
import { csrf } from '../security/csrf.ts';
import { waitBeforeGuess, type Lockout } from '../security/lockout.ts';
import type { Config } from '../config.ts';
import type { MfaService } from '../accounts/mfa.ts';
import type { MfaChallenges } from './mfa-challenges.ts';
import { RateLimitedError, tryAgainIn, type RateLimits } from '../security/rate-limit.ts';

/** Shared by both the wrong-password and unknown-email answers, word for word. */
export const LOGIN_FAILED = 'The email or password is incorrect.';

// Strict objects: unknown keys (including "$"-prefixed operators) fail validation.
const loginForm = z.object({
  _csrf: z.string(),
  email: z.string().min(1).max(254),
  password: z.string().min(1).max(PASSWORD_MAX_LENGTH),
}).strict();

const mfaForm = z.object({ _csrf: z.string(), code: z.string().max(40) }).strict();

/** How long the second step may wait after the password. */
const MFA_CHALLENGE_SECONDS = 5 * 60;

const consentForm = z.object({ _csrf: z.string(), decision: z.enum(['allow', 'deny']) }).strict();

function partition<T>(items: readonly T[], test: (item: T) => boolean): [T[], T[]] {
  return [items.filter(test), items.filter((item) => !test(item))];
}

export interface InteractionDeps {
  provider: Provider;
  accounts: AccountService;
  logger: Logger;
  config: Config;
  rateLimits: RateLimits;
  lockout: Lockout;
  mfa: MfaService;
  challenges: MfaChallenges;
}

export function interactionRoutes({ provider, accounts, logger, config, rateLimits, lockout, mfa, challenges }: InteractionDeps): Router {
  const router = new Router({ prefix: '/interaction' });

  // Small limits: a login form is well under 1 kB, and large bodies are refused (413) before
  // anything is parsed or hashed.
  router.use(bodyParser({ enableTypes: ['form', 'json'], formLimit: '8kb', jsonLimit: '8kb', encoding: 'utf-8' }));
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

  async function renderMfa(ctx: Context, uid: string, clientId: unknown, error?: string): Promise<void> {
    const client = typeof clientId === 'string' ? await provider.Client.find(clientId) : undefined;
    await ctx.render('mfa', { title: 'Two-step verification', uid, clientName: client?.clientName, error });
  }

  /**
   * Why this sign-in must wait, if it must: the limits per address and per email, and the email's
   * lockout. Keyed by the submitted email whether or not it has an account, so a refusal says
   * nothing about which emails exist.
   */
  async function signInRefusal(ip: string, email: string | undefined): Promise<RateLimitedError | undefined> {
    const waitFor = (check: Promise<void>) => check.then(() => 0, (error: unknown) => {
      if (error instanceof RateLimitedError) return error.retryAfterSeconds;
      throw error;
    });
    const waits = await Promise.all([
      waitFor(rateLimits.consume('signinPerIp', ip)),
      ...(email === undefined ? [] : [waitFor(rateLimits.consume('signinPerAccount', email)), lockout.lockedFor(email)]),
    ]);
    const wait = Math.max(...waits);
    return wait > 0 ? new RateLimitedError(wait) : undefined;
  }

  router.get('/:uid', async (ctx) => {
    const { uid, prompt, params } = await provider.interactionDetails(ctx.req, ctx.res);
    if (uid !== ctx.params.uid) throw new errors.SessionNotFound('interaction mismatch');
    if (prompt.name === 'login') {
      // A reload between the password and the code shows the code page again.
      if (await challenges.pending(uid)) return renderMfa(ctx, uid, params.client_id);
      return renderLogin(ctx, uid, params.client_id);
    }
    if (prompt.name !== 'consent') throw new AppError('unsupported_prompt', 'This request needs a step this server does not offer.', 400);

    const client = await provider.Client.find(String(params.client_id));
    const details = prompt.details as { missingOIDCScope?: string[]; missingResourceScopes?: Record<string, string[]> };
    // The documents scopes also count as OIDC scopes to oidc-provider; only those the API will
    // actually grant (its resource scopes) are shown, so nobody is asked for documents:admin in vain.
    const oidcScopes = (details.missingOIDCScope ?? []).filter((scope) => !isDocumentsScope(scope));
    const scopes = [...new Set([...oidcScopes, ...Object.values(details.missingResourceScopes ?? {}).flat()])];
    await ctx.render('consent', {
      title: 'Allow access',
      uid,
      clientName: client?.clientName ?? 'An application',
      scopes: scopes.map((scope) => ({ scope, description: SCOPE_DESCRIPTIONS[scope] ?? scope })),
    });
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
      ctx.status = 429;
      ctx.set('Retry-After', String(refusal.retryAfterSeconds));
      return renderLogin(ctx, uid, params.client_id, refusal.message, form.success ? form.data.email : '');
    }
    // A malformed submission (missing field, object or array where text belongs, operator
    // injection) is a failed sign-in like any other; no hashing is done for it.
    const accountId = form.success ? await accounts.authenticate(form.data.email, form.data.password) : undefined;
    if (!accountId || email === undefined) {
      // Counted for unknown emails too: a lock then says nothing about the account, and both
      // answers take the same work (and time).
      const lockSeconds = email === undefined ? 0 : await lockout.recordFailure(email);
      logger.info({ uid, reason: form.success ? 'bad_credentials' : 'malformed_form', lockSeconds }, 'sign-in failed');
      ctx.status = 401;
      return renderLogin(ctx, uid, params.client_id, LOGIN_FAILED, form.success ? form.data.email : '');
    }
    await lockout.recordSuccess(email);

    if (config.accounts.requireVerifiedEmail && !(await accounts.get(accountId))?.email_verified) {
      // Only after the right password, so it tells nothing to someone who does not have it.
      ctx.status = 403;
      return renderLogin(ctx, uid, params.client_id, 'Verify your email address first: follow the link we sent you, or ask for a new one at /verify-email/resend.', email);
    }
    if (await mfa.isEnabled(accountId)) {
      await challenges.start(uid, accountId, MFA_CHALLENGE_SECONDS);
      logger.info({ uid, accountId }, 'password accepted; waiting for the second step');
      return renderMfa(ctx, uid, params.client_id);
    }
    const client = await provider.Client.find(String(params.client_id));
    if (mfaRequired(params, client)) {
      ctx.status = 403;
      return renderLogin(ctx, uid, params.client_id, 'This application requires two-step verification. Turn it on from your account page (/account), then sign in again.', email);
    }
    logger.info({ uid, accountId }, 'sign-in succeeded');
    await finish(ctx, interaction, { login: { accountId, amr: ['pwd'], acr: ACR_PASSWORD } });
  });

  router.post('/:uid/mfa', async (ctx) => {
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, params } = interaction;
    if (uid !== ctx.params.uid || prompt.name !== 'login') throw new errors.SessionNotFound('interaction mismatch');
    const accountId = await challenges.pending(uid);
    if (!accountId) throw new errors.SessionNotFound('no second step pending');

    // Wrong codes lock the second step like wrong passwords lock the first, with growing waits,
    // so the 10^6 codes cannot be worked through slowly either.
    const lockKey = `mfa:${accountId}`;
    const wait = await waitBeforeGuess(lockout, rateLimits, lockKey, 'mfaPerAccount', accountId);
    if (wait) {
      ctx.status = 429;
      ctx.set('Retry-After', String(wait));
      return renderMfa(ctx, uid, params.client_id, `Too many attempts. ${tryAgainIn(wait)}`);
    }
    const form = mfaForm.safeParse(ctx.request.body);
    const factor = form.success ? await mfa.verifySignIn(accountId, form.data.code) : undefined;
    await (factor ? lockout.recordSuccess(lockKey) : lockout.recordFailure(lockKey));
    if (!factor) {
      logger.info({ uid, accountId }, 'second step failed');
      ctx.status = 401;
      return renderMfa(ctx, uid, params.client_id, 'That code is not valid. Enter the current code from your app, or an unused recovery code.');
    }
    await challenges.end(uid);
    logger.info({ uid, accountId, factor }, 'sign-in succeeded with a second step');
    // RFC 8176: "otp" for the app's code; a recovery code is another factor, but not an OTP device.
    const amr = factor === 'otp' ? ['pwd', 'otp'] : ['pwd', 'mfa'];
    await finish(ctx, interaction, { login: { accountId, amr, acr: ACR_MFA } });
  });

  router.post('/:uid/consent', async (ctx) => {
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    const { uid, prompt, params, session, grantId } = interaction;
    if (uid !== ctx.params.uid || prompt.name !== 'consent' || !session) throw new errors.SessionNotFound('interaction mismatch');

    const form = consentForm.safeParse(ctx.request.body);
    if (!form.success) throw new AppError('invalid_form', 'Choose Allow or Deny.', 400);
    if (form.data.decision === 'deny') {
      return finish(ctx, interaction, { error: 'access_denied', error_description: 'The user denied the request' });
    }

    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: String(params.client_id) });
    if (!grant) throw new errors.SessionNotFound('grant not found');
    const details = prompt.details as {
      missingOIDCScope?: string[]; missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]>;
    };
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
    await finish(ctx, interaction, { consent: grantId ? {} : { grantId: savedGrantId } });
  });

  return router;
}
