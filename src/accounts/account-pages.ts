/**
 * The account pages (/account): profile, password, two-step verification, connected apps and
 * "sign out everywhere" for the signed-in user. They read oidc-provider's own session cookie; with
 * no session they sign in through the provider like any app, as the first-party client
 * ACCOUNT_CONSOLE_CLIENT_ID (first-party, so no consent screen: see src/interactions/routes.ts), so
 * the sign-in (with its rate limits, lockout and second step) is the same one apps get.
 * Every form has a CSRF token; every change is audit-logged.
 */
import { createHash, randomBytes } from 'node:crypto';
import Router from '@koa/router';
import { formBody } from '../http/form-body.ts';
import type { Context } from 'koa';
import type { Provider } from 'oidc-provider';
import { z } from 'zod';
import type { ArtifactStore } from '../../adapters/mongodb.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Config } from '../config.ts';
import { AppError } from '../http/errors.ts';
import type { Mailer } from '../mail/mailer.ts';
import { grantSubject, type TokenRevocations } from '../oidc/revocations.ts';
import type { Logger } from '../observability/logger.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID } from '../oidc/provider.ts';
import { csrf } from '../security/csrf.ts';
import { passwordHint } from '../security/password-policy.ts';
import { waitBeforeGuess, type Lockout } from '../security/lockout.ts';
import { tryAgainIn, type RateLimits } from '../security/rate-limit.ts';
import { MfaError, type MfaService } from './mfa.ts';
import { MAX_LENGTH, PROFILE_FIELDS, type ProfileChanges } from './profile.ts';
import { ProfileError, type AccountService, type AccountView } from './service.ts';
import type { AccountTokens } from './tokens.ts';

const NOTICES = {
  'profile-saved': 'Your profile is saved.',
  'mfa-on': 'Two-step verification is on.',
  'mfa-off': 'Two-step verification is off.',
  'app-removed': 'The app no longer has access to your account.',
} as const;
type Notice = keyof typeof NOTICES;

// A field left out of the post stays as it is; the page's form always sends them all.
const profileForm = z.strictObject({
  _csrf: z.string(),
  ...Object.fromEntries(PROFILE_FIELDS.map((field) => [field, z.string().max(MAX_LENGTH[field] + 100).optional()])) as
    Record<(typeof PROFILE_FIELDS)[number], z.ZodOptional<z.ZodString>>,
});
const passwordForm = z.strictObject({ _csrf: z.string(), current: z.string().max(1024), password: z.string().max(1024) });
const codeForm = z.strictObject({ _csrf: z.string(), code: z.string().max(40) });
const newCodesForm = z.strictObject({ _csrf: z.string(), password: z.string().max(1024), code: z.string().max(40) });
const disableForm = z.strictObject({ _csrf: z.string(), password: z.string().max(1024), code: z.string().max(40) });
const revokeForm = z.strictObject({ _csrf: z.string(), grant: z.string().max(200) });

export interface AccountPagesDeps {
  config: Config;
  provider: Provider;
  store: ArtifactStore;
  accounts: AccountService;
  mfa: MfaService;
  mailer: Mailer;
  audit: AuditLog;
  logger: Logger;
  tokens: AccountTokens;
  rateLimits: RateLimits;
  lockout: Lockout;
  revocations: TokenRevocations;
}

export function accountPages({ config, provider, store, accounts, mfa, mailer, audit, logger, tokens, rateLimits, lockout, revocations }: AccountPagesDeps): Router {
  const router = new Router({ prefix: '/account' });
  const policy = accounts.passwordPolicy;

  router.use(async (ctx, next) => {
    ctx.set('Cache-Control', 'no-store');
    await next();
  });
  router.use(formBody({ limit: '8kb' }));
  router.use(csrf({ secure: config.secureTransport }));

  /** The signed-in account, or a redirect to sign in (answered here) and undefined. */
  async function signedIn(ctx: Context): Promise<AccountView | undefined> {
    const session = await provider.Session.get(ctx);
    const account = session.accountId ? await accounts.get(session.accountId) : undefined;
    if (account && !account.disabled) return account;
    ctx.redirect('/account/sign-in');
    return undefined;
  }

  const record = (ctx: Context, action: string, accountId: string, outcome: 'success' | 'denied' = 'success', reason?: string) =>
    audit.record({
      actor: { sub: accountId, clientId: ACCOUNT_CONSOLE_CLIENT_ID }, action, target: accountId, outcome, ...(reason ? { reason } : {}),
      ip: ctx.ip, requestId: (ctx.state.requestId as string | undefined) ?? null,
    });

  const notifyMfaChange = (account: AccountView, enabled: boolean) => {
    mailer.send({ to: account.email, template: 'mfa-changed', data: { name: account.name, enabled, when: new Date().toISOString() } })
      .catch((error: unknown) => logger.error({ err: error }, 'sending the two-step verification notice failed'));
  };

  async function connectedApps(accountId: string) {
    const live = await store.grantsOf(accountId);
    // One entry per app with the union of its scopes, also for grants from before consent was
    // kept as one grant per app; "remove access" removes all of them (apps/revoke).
    const apps = new Map<string, { grantId: string; name: string; scopes: Set<string> }>();
    for (const { id, payload } of live) {
      const clientId = String(payload.clientId);
      if (clientId === ACCOUNT_CONSOLE_CLIENT_ID) continue;
      const resources = Object.values((payload.resources ?? {}) as Record<string, string>);
      const scopes = [String((payload.openid as { scope?: string } | undefined)?.scope ?? ''), ...resources]
        .join(' ').split(' ').filter((s) => s && s !== 'openid');
      const app = apps.get(clientId)
        ?? { grantId: id, name: (await provider.Client.find(clientId))?.clientName ?? clientId, scopes: new Set<string>() };
      for (const scope of scopes) app.scopes.add(scope);
      apps.set(clientId, app);
    }
    return [...apps.values()].map((app) => ({ ...app, scopes: [...app.scopes] }));
  }

  /** `profile`: what the profile form shows, the submitted values after a refusal. */
  async function renderAccount(ctx: Context, account: AccountView, errors: string[] = [], profile: ProfileChanges = {}): Promise<void> {
    const notice = typeof ctx.query.notice === 'string' && Object.hasOwn(NOTICES, ctx.query.notice) ? NOTICES[ctx.query.notice as Notice] : '';
    await ctx.render('account', {
      title: 'Your account', account, notice, errors, profile: { ...account, ...profile }, mfa: await mfa.status(account.id),
      apps: await connectedApps(account.id), hint: passwordHint(policy), minLength: policy.minLength,
    });
  }

  /**
   * Guesses at the password or a code from a signed-in browser count like sign-in attempts: the
   * per-account limit, and a lockout of their own that grows with consecutive failures.
   * Returns the refusal to show, or undefined to go ahead.
   */
  async function tooManyGuesses(ctx: Context, account: AccountView): Promise<string | undefined> {
    const key = `account-page:${account.id}`;
    const wait = await waitBeforeGuess(lockout, rateLimits, key, 'signinPerAccount', key);
    if (!wait) return undefined;
    ctx.status = 429;
    ctx.set('Retry-After', String(wait));
    return `Too many attempts. ${tryAgainIn(wait)}`;
  }

  const guessed = (account: AccountView, right: boolean) =>
    (right ? lockout.recordSuccess(`account-page:${account.id}`) : lockout.recordFailure(`account-page:${account.id}`));

  const done = (ctx: Context, notice: Notice) => {
    ctx.status = 303;
    ctx.redirect(`/account?notice=${notice}`);
  };

  router.get('/', async (ctx) => {
    const account = await signedIn(ctx);
    if (account) await renderAccount(ctx, account);
  });

  // Sign-in: an authorization request as the first-party client. The code that comes back is not
  // needed (the provider's session cookie is what the pages read), so it is left to expire.
  router.get('/sign-in', (ctx) => {
    const verifier = randomBytes(32).toString('base64url');
    const url = new URL('/auth', config.issuer);
    url.search = new URLSearchParams({
      client_id: ACCOUNT_CONSOLE_CLIENT_ID, response_type: 'code', scope: 'openid',
      redirect_uri: `${config.issuer}/account/callback`, state: randomBytes(16).toString('base64url'),
      code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
    }).toString();
    ctx.redirect(url.toString());
  });

  router.get('/callback', (ctx) => {
    if (typeof ctx.query.error === 'string') throw new AppError('sign_in_failed', 'Signing in to your account did not complete. Try again.', 400);
    ctx.redirect('/account');
  });

  router.post('/profile', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    const form = profileForm.safeParse(ctx.request.body);
    if (!form.success) throw new AppError('invalid_form', 'The form could not be read. Reload the page and try again.', 400);
    const { _csrf: _, ...changes } = form.data;
    try {
      await accounts.updateProfile(account.id, changes);
    } catch (error) {
      if (!(error instanceof ProfileError)) throw error;
      ctx.status = 400;
      return renderAccount(ctx, account, [...error.problems], changes);
    }
    await record(ctx, 'account.profile.update', account.id);
    done(ctx, 'profile-saved');
  });

  router.post('/password', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    const form = passwordForm.safeParse(ctx.request.body);
    if (!form.success) throw new AppError('invalid_form', 'The form could not be read. Reload the page and try again.', 400);
    const refusal = await tooManyGuesses(ctx, account);
    if (refusal) return renderAccount(ctx, account, [refusal]);
    const right = await accounts.checkPassword(account.id, form.data.current);
    await guessed(account, right);
    if (!right) {
      await record(ctx, 'account.password.change', account.id, 'denied', 'wrong_password');
      ctx.status = 400;
      return renderAccount(ctx, account, ['Your current password is not correct.']);
    }
    const problems = accounts.passwordProblems(form.data.password, { email: account.email, name: account.name });
    if (problems.length) {
      ctx.status = 400;
      return renderAccount(ctx, account, problems);
    }
    // Signs the account out everywhere, this browser included; reset links sent before now die too.
    await accounts.setPassword(account.id, form.data.password);
    await tokens.revokeAll('reset-password', account.id);
    await record(ctx, 'account.password.change', account.id);
    mailer.send({ to: account.email, template: 'password-changed', data: { name: account.name, when: new Date().toISOString(), signInLink: `${config.issuer}/account` } })
      .catch((error: unknown) => logger.error({ err: error }, 'sending the password notice failed'));
    await ctx.render('message', {
      title: 'Password changed', heading: 'Password changed',
      paragraphs: ['Your new password is set, and you have been signed out everywhere.'],
      links: [{ href: '/account', text: 'Sign in again' }],
    });
  });

  /** The enrolment in progress, or a new one: reloading the page keeps the QR code already scanned. */
  const enrolment = async (account: AccountView) =>
    (await mfa.pendingEnrolment(account.id, account.email)) ?? mfa.beginEnrolment(account.id, account.email);

  router.get('/mfa/setup', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    if ((await mfa.status(account.id)).enabled) return done(ctx, 'mfa-on');
    await ctx.render('mfa-setup', { title: 'Set up two-step verification', error: '', ...(await enrolment(account)) });
  });

  router.post('/mfa/setup', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    const form = codeForm.safeParse(ctx.request.body);
    const refusal = await tooManyGuesses(ctx, account);
    if (refusal) return ctx.render('mfa-setup', { title: 'Set up two-step verification', error: refusal, ...(await enrolment(account)) });
    try {
      const codes = await mfa.confirmEnrolment(account.id, form.success ? form.data.code : '');
      // Sessions signed in with the password alone (perhaps someone else's) end now; this one stays.
      const current = await provider.Session.get(ctx);
      await store.endOtherSessions(account.id, current.jti);
      await record(ctx, 'account.mfa.enable', account.id);
      notifyMfaChange(account, true);
      await ctx.render('recovery-codes', { title: 'Your recovery codes', codes });
    } catch (error) {
      if (!(error instanceof MfaError)) throw error;
      // A second submit of the same form: it is on already (the codes were on the first answer).
      if (error.code === 'mfa_already_enabled') return done(ctx, 'mfa-on');
      await guessed(account, false);
      ctx.status = 400;
      await ctx.render('mfa-setup', {
        title: 'Set up two-step verification', error: 'That code did not match. Enter the current code from your app.',
        ...(await enrolment(account)),
      });
    }
  });

  router.post('/mfa/recovery-codes', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    // Both factors: new recovery codes are a working second factor, so the password alone (which
    // may be what leaked) must not be enough to mint them.
    const form = newCodesForm.safeParse(ctx.request.body);
    const refusal = await tooManyGuesses(ctx, account);
    if (refusal) return renderAccount(ctx, account, [refusal]);
    const right = form.success && await accounts.checkPassword(account.id, form.data.password)
      && await mfa.verifySignIn(account.id, form.data.code) === 'otp';
    await guessed(account, right);
    if (!right) {
      ctx.status = 400;
      return renderAccount(ctx, account, ['Your password or the code is not correct.']);
    }
    const codes = await mfa.regenerateRecoveryCodes(account.id);
    await record(ctx, 'account.mfa.recovery-codes', account.id);
    await ctx.render('recovery-codes', { title: 'Your recovery codes', codes });
  });

  router.post('/mfa/disable', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    const form = disableForm.safeParse(ctx.request.body);
    const refusal = await tooManyGuesses(ctx, account);
    if (refusal) return renderAccount(ctx, account, [refusal]);
    try {
      await mfa.disable(account.id, form.success ? form.data.password : '', form.success ? form.data.code : '');
      await guessed(account, true);
    } catch (error) {
      if (!(error instanceof MfaError)) throw error;
      await guessed(account, false);
      await record(ctx, 'account.mfa.disable', account.id, 'denied', error.code);
      ctx.status = 400;
      return renderAccount(ctx, account, ['Your password or the code is not correct.']);
    }
    await record(ctx, 'account.mfa.disable', account.id);
    notifyMfaChange(account, false);
    done(ctx, 'mfa-off');
  });

  router.post('/apps/revoke', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    const form = revokeForm.safeParse(ctx.request.body);
    const grant = form.success ? await store.adapterFor('Grant').find(form.data.grant) : undefined;
    // Only the account's own grants: another id answers as if it did not exist.
    if (!grant || grant.accountId !== account.id) throw new AppError('not_found', 'That app is not connected to your account.', 404);
    const grants = await store.grantsOf(account.id, String(grant.clientId));
    // The app's JWT access tokens for the documents API are not stored, so they are revoked too;
    // first, so that a failure leaves the grant there to try again with.
    await revocations.revoke('grant', grantSubject(account.id, String(grant.clientId)));
    await Promise.all(grants.map((g) => store.revokeGrant(g.id)));
    await record(ctx, 'account.app.revoke', account.id);
    done(ctx, 'app-removed');
  });

  router.post('/sign-out-everywhere', async (ctx) => {
    const account = await signedIn(ctx);
    if (!account) return;
    await accounts.signOutEverywhere(account.id);
    await record(ctx, 'account.sign-out-everywhere', account.id);
    await ctx.render('message', {
      title: 'Signed out everywhere', heading: 'Signed out everywhere',
      paragraphs: ['Every session of your account has ended, and apps need you to sign in again.'],
      links: [{ href: '/account', text: 'Sign in again' }],
    });
  });

  return router;
}
