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
import type { AccountService } from '../accounts/service.ts';
import { PASSWORD_MAX_LENGTH } from '../accounts/password.ts';
import { AppError } from '../http/errors.ts';
import type { Logger } from '../observability/logger.ts';
import { isDocumentsScope, SCOPE_DESCRIPTIONS } from '../oidc/provider.ts';
import { csrf } from '../security/csrf.ts';

/** Shared by both the wrong-password and unknown-email answers, word for word. */
export const LOGIN_FAILED = 'The email or password is incorrect.';

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
  accounts: AccountService;
  logger: Logger;
  secureCookies: boolean;
}

export function interactionRoutes({ provider, accounts, logger, secureCookies }: InteractionDeps): Router {
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
  router.use(csrf({ secure: secureCookies }));

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
    await ctx.render('login', { title: 'Sign in', uid, clientName: client?.clientName, error, email });
  }

  router.get('/:uid', async (ctx) => {
    const { uid, prompt, params } = await provider.interactionDetails(ctx.req, ctx.res);
    if (uid !== ctx.params.uid) throw new errors.SessionNotFound('interaction mismatch');
    if (prompt.name === 'login') return renderLogin(ctx, uid, params.client_id);
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
    // A malformed submission (missing field, object or array where text belongs, operator
    // injection) is a failed sign-in like any other; no hashing is done for it.
    const accountId = form.success ? await accounts.authenticate(form.data.email, form.data.password) : undefined;
    if (!accountId) {
      logger.info({ uid, reason: form.success ? 'bad_credentials' : 'malformed_form' }, 'sign-in failed');
      ctx.status = 401;
      return renderLogin(ctx, uid, params.client_id, LOGIN_FAILED, form.success ? form.data.email : '');
    }
    logger.info({ uid, accountId }, 'sign-in succeeded');
    await finish(ctx, interaction, { login: { accountId, amr: ['pwd'] } });
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
