/**
 * Self-service pages outside any sign-in: registration, email verification (and resending it),
 * and password reset. None of them tells whether an email has an account: every form answers the
 * same page, the mail goes out after the answer (so its cost is not in the response time), and
 * registration does the same argon2 work for a taken address as for a new one.
 *
 * Links in mail carry the token in the query string: the request log never records queries, and
 * every page sends Referrer-Policy: no-referrer. Opening a link only shows a button; the token is
 * spent by the POST, so mail scanners that prefetch links do not use it up.
 *
 * Only a submission that goes on to mail (or to the same answer for an existing account) spends
 * the per-address and per-email budgets: a typo or a weak password is answered on the page first.
 *
 * No dead ends: the sign-in page links here with `?interaction=<uid>`, the forms carry it, and it
 * is stored with the mailed token, so the page after verifying or resetting offers to continue to
 * the application (GET /interaction/<uid> resumes the authorization in the browser that started it).
 */
import Router from '@koa/router';
import { formBody } from '../http/form-body.ts';
import type { Context } from 'koa';
import type { Provider } from 'oidc-provider';
import { z } from 'zod';
import type { AuditLog } from '../audit/log.ts';
import type { Config } from '../config.ts';
import { AppError } from '../http/errors.ts';
import type { Mailer, MailMessage } from '../mail/mailer.ts';
import type { Logger } from '../observability/logger.ts';
import { csrf } from '../security/csrf.ts';
import { passwordHint } from '../security/password-policy.ts';
import type { Lockout } from '../security/lockout.ts';
import { RateLimitedError, tryAgainIn, type RateLimits } from '../security/rate-limit.ts';
import { isValidEmail, normalizeEmail, type AccountService } from './service.ts';
import { sendVerificationLink } from './verification-mail.ts';
import { checkProfile } from './profile.ts';
import { INTERACTION_UID, type AccountTokens } from './tokens.ts';

const VERIFY_TTL_SECONDS = 24 * 3600;
const RESET_TTL_SECONDS = 3600;

/** The sign-in the user came from, carried through the form to the mailed token. */
const interaction = z.string().regex(INTERACTION_UID).optional();
const registerForm = z.strictObject({
  _csrf: z.string(),
  email: z.string().max(254),
  name: z.string().max(100),
  password: z.string().max(1024),
  interaction,
});
const emailForm = z.strictObject({ _csrf: z.string(), email: z.string().max(254), interaction });
const tokenForm = z.strictObject({ _csrf: z.string(), token: z.string().max(100) });
const resetForm = z.strictObject({ _csrf: z.string(), token: z.string().max(100), password: z.string().max(1024) });

export interface SelfServiceDeps {
  config: Config;
  /** Only to name the application a pending sign-in belongs to. */
  provider: Provider;
  accounts: AccountService;
  tokens: AccountTokens;
  mailer: Mailer;
  rateLimits: RateLimits;
  lockout: Lockout;
  audit: AuditLog;
  logger: Logger;
}

export function selfServiceRoutes({ config, provider, accounts, tokens, mailer, rateLimits, lockout, audit, logger }: SelfServiceDeps): Router {
  const router = new Router();
  const policy = accounts.passwordPolicy;
  // /account signs in through the provider: a working sign-in page for every mail.
  const signInLink = `${config.issuer}/account`;
  const link = (path: string, token?: string) => `${config.issuer}${path}${token ? `?token=${encodeURIComponent(token)}` : ''}`;

  router.use(['/register', '/verify-email', '/verify-email/resend', '/forgot', '/reset'], async (ctx, next) => {
    ctx.set('Cache-Control', 'no-store');
    await next();
  });
  router.use(formBody({ limit: '8kb' }));
  router.use(csrf({ secure: config.secureTransport }));

  /**
   * Runs after the answer has gone out, so its cost is not in the response time; a failure is
   * logged (the page cannot say it without telling whether the address has an account).
   */
  function later(what: string, work: () => Promise<void>): void {
    setImmediate(() => {
      work().catch((error: unknown) => logger.error({ err: error }, `${what} failed`));
    });
  }

  const sendLater = (message: MailMessage) => later(`sending the ${message.template} mail`, () => mailer.send(message));

  /** A refused attempt comes from someone unknown: the account is its target, not its actor. */
  function record(ctx: Context, action: string, accountId: string | null, outcome: 'success' | 'denied' = 'success', reason?: string) {
    return audit.record({
      actor: { sub: outcome === 'success' ? accountId : null, clientId: null }, action, target: accountId, outcome, ...(reason ? { reason } : {}),
      ip: ctx.ip, requestId: (ctx.state.requestId as string | undefined) ?? null,
    });
  }

  /** Consumes the named limits; over one, answers 429 with Retry-After and returns the message to show. */
  async function limited(ctx: Context, checks: [Parameters<RateLimits['consume']>[0], string][]): Promise<string | undefined> {
    try {
      for (const [name, key] of checks) await rateLimits.consume(name, key);
      return undefined;
    } catch (error) {
      if (!(error instanceof RateLimitedError)) throw error;
      ctx.status = 429;
      ctx.set('Retry-After', String(error.retryAfterSeconds));
      return `Too many requests. ${tryAgainIn(error.retryAfterSeconds)}`;
    }
  }

  type Link = { href: string; text: string };
  const message = (ctx: Context, heading: string, paragraphs: string[], links: Link[] = []) =>
    ctx.render('message', { title: heading, heading, paragraphs, links });

  /** The `interaction` query parameter of a GET, when it has the shape of a uid. */
  const fromQuery = (ctx: Context): string | undefined => {
    const uid = ctx.query.interaction;
    return typeof uid === 'string' && INTERACTION_UID.test(uid) ? uid : undefined;
  };

  /**
   * Where to go once the address is proven or the password set: back to the sign-in the user came
   * from while it is still pending (named after its application), and to the account page, which
   * always works.
   */
  async function onwards(uid: string | undefined): Promise<Link[]> {
    const links: Link[] = [];
    const pending = uid ? await provider.Interaction.find(uid).catch(() => undefined) : undefined;
    if (pending) {
      const clientId = pending.params.client_id;
      const client = typeof clientId === 'string' ? await provider.Client.find(clientId).catch(() => undefined) : undefined;
      links.push({ href: `/interaction/${uid}`, text: `Continue to ${client?.clientName ?? 'the application'}` });
    }
    links.push({ href: '/account', text: 'Go to your account' });
    return links;
  }

  // --- registration -------------------------------------------------------------------------

  function requireRegistration(): void {
    if (!config.accounts.registrationEnabled) throw new AppError('registration_closed', 'Registration is not open on this server.', 404);
  }

  const renderRegister = (ctx: Context, values: { email?: string; name?: string; interaction?: string | undefined }, errors: string[] = []) =>
    ctx.render('register', {
      title: 'Create an account', errors, email: values.email ?? '', name: values.name ?? '', interaction: values.interaction ?? '',
      hint: passwordHint(policy), minLength: policy.minLength,
    });

  router.get('/register', async (ctx) => {
    requireRegistration();
    await renderRegister(ctx, { interaction: fromQuery(ctx) });
  });

  router.post('/register', async (ctx) => {
    requireRegistration();
    const form = registerForm.safeParse(ctx.request.body);
    if (!form.success) throw new AppError('invalid_form', 'The form could not be read. Reload the page and try again.', 400);
    const email = normalizeEmail(form.data.email);
    const name = form.data.name.trim();
    const values = { email, name, interaction: form.data.interaction };

    // Mistakes are answered before any budget is spent: they say nothing about accounts.
    const errors = [
      ...(isValidEmail(email) ? [] : ['Enter a valid email address.']),
      ...(name ? [] : ['Enter your name.']),
      ...checkProfile({ name }).problems,
      ...accounts.passwordProblems(form.data.password, { email, name }),
    ];
    if (errors.length) {
      ctx.status = 400;
      return renderRegister(ctx, values, errors);
    }
    const tooMany = await limited(ctx, [['registerPerIp', ctx.ip], ['registerPerEmail', email]]);
    if (tooMany) return renderRegister(ctx, values, [tooMany]);

    // No account yet: it is created when the link in the mail is followed, so nobody can take
    // (or sign in to) an address whose mail they do not receive.
    const prepared = await accounts.prepareRegistration(email, form.data.password);
    if ('existing' in prepared) {
      const { existing } = prepared;
      sendLater({ to: existing.email, template: 'account-exists', data: { name: existing.name, signInLink, resetLink: link('/forgot') } });
      await record(ctx, 'account.register', existing.id, 'denied', 'email_taken');
    } else {
      const pending = { name, passwordHash: prepared.passwordHash };
      const token = await tokens.issue('register', { accountId: '', email, pending, interaction: form.data.interaction }, VERIFY_TTL_SECONDS);
      // The name is the registrant's text; it stays out of a mail to an address not yet proven theirs.
      sendLater({ to: email, template: 'verify-email', data: { link: link('/verify-email', token), expiresInHours: 24 } });
    }
    await message(ctx, 'Check your inbox', [
      `We sent a message to ${email}. Follow the link in it to finish setting up your account.`,
      'If nothing arrives within a few minutes, check your spam folder.',
    ]);
  });

  // --- email verification -------------------------------------------------------------------

  const invalidLink = (ctx: Context, retry: Link) => {
    ctx.status = 400;
    return message(ctx, 'This link has expired', ['The link is invalid, has expired or was already used.'], [retry]);
  };

  router.get('/verify-email', async (ctx) => {
    const token = typeof ctx.query.token === 'string' ? ctx.query.token : '';
    if (!(await tokens.peek(['register', 'verify-email'], token))) return invalidLink(ctx, { href: '/verify-email/resend', text: 'Send a new link' });
    await ctx.render('confirm-token', {
      title: 'Verify your email', heading: 'Verify your email', text: 'Confirm that this address is yours.',
      action: '/verify-email', token, button: 'Verify my email',
    });
  });

  router.post('/verify-email', async (ctx) => {
    const form = tokenForm.safeParse(ctx.request.body);
    const subject = form.success ? await tokens.consume(['register', 'verify-email'], form.data.token) : undefined;
    if (subject?.kind === 'register' && subject.pending) {
      try {
        const account = await accounts.createRegistered({ email: subject.email, ...subject.pending });
        await record(ctx, 'account.register', account.id);
      } catch (error) {
        if (!(error instanceof AppError && error.code === 'email_taken')) throw error;
        // Whoever follows the link reads this address's mail, so saying so reveals nothing.
        return message(ctx, 'You already have an account', ['This address already has an account. Sign in, or reset your password if you have forgotten it.'], [
          ...(await onwards(subject.interaction)), { href: '/forgot', text: 'Reset your password' },
        ]);
      }
    } else if (!subject || !(await accounts.markEmailVerified(subject.accountId, subject.email))) {
      return invalidLink(ctx, { href: '/verify-email/resend', text: 'Send a new link' });
    } else {
      await record(ctx, 'account.email.verify', subject.accountId);
    }
    await message(ctx, 'Email verified', ['Your email address is verified and your account is ready. Sign in with your email and password.'],
      await onwards(subject.interaction));
  });

  type EmailPage = 'resend' | 'forgot';
  const renderEmailForm = (ctx: Context, page: EmailPage, values: { email?: string; interaction?: string | undefined } = {}, error = '') =>
    ctx.render('email-form', {
      ...(page === 'resend'
        ? { title: 'Verify your email', heading: 'Send a new verification link', text: 'Enter the address you registered with.', action: '/verify-email/resend' }
        : { title: 'Reset your password', heading: 'Reset your password', text: 'Enter the address of your account and we will send you a link to choose a new password.', action: '/forgot' }),
      button: 'Send link', email: values.email ?? '', interaction: values.interaction ?? '', error,
    });

  /**
   * The email of a resend or reset form, or undefined once the form has been answered: unreadable
   * (400), a typo (400, the form again, nothing spent) or over a budget (429).
   */
  async function emailFrom(ctx: Context, page: EmailPage): Promise<{ email: string; interaction?: string | undefined } | undefined> {
    const form = emailForm.safeParse(ctx.request.body);
    if (!form.success) throw new AppError('invalid_form', 'The form could not be read. Reload the page and try again.', 400);
    const values = { email: normalizeEmail(form.data.email), interaction: form.data.interaction };
    if (!isValidEmail(values.email)) {
      ctx.status = 400;
      await renderEmailForm(ctx, page, values, 'Enter a valid email address.');
      return undefined;
    }
    const tooMany = await limited(ctx, page === 'resend'
      ? [['verifyPerIp', ctx.ip], ['verifyPerEmail', values.email]]
      : [['resetPerIp', ctx.ip], ['resetPerEmail', values.email]]);
    if (!tooMany) return values;
    await renderEmailForm(ctx, page, values, tooMany);
    return undefined;
  }

  router.get('/verify-email/resend', (ctx) => renderEmailForm(ctx, 'resend', { interaction: fromQuery(ctx) }));

  router.post('/verify-email/resend', async (ctx) => {
    const values = await emailFrom(ctx, 'resend');
    if (!values) return;
    const { email } = values;
    const account = await accounts.get(email);
    if (account && !account.email_verified && !account.disabled) {
      later('resending a verification link', () => sendVerificationLink({ tokens, mailer, issuer: config.issuer }, account, values.interaction));
    }
    await message(ctx, 'Check your inbox', [`If ${email} has an account that still needs verifying, a new link is on its way.`]);
  });

  // --- password reset -----------------------------------------------------------------------

  router.get('/forgot', (ctx) => renderEmailForm(ctx, 'forgot', { interaction: fromQuery(ctx) }));

  router.post('/forgot', async (ctx) => {
    const values = await emailFrom(ctx, 'forgot');
    if (!values) return;
    const { email } = values;
    // Everything about the account happens after the answer, so existing and unknown addresses
    // answer in the same time.
    later('sending a reset link', async () => {
      const account = await accounts.get(email);
      if (!account || account.disabled) return;
      await tokens.revokeAll('reset-password', account.id);
      const token = await tokens.issue('reset-password', { accountId: account.id, email: account.email, interaction: values.interaction }, RESET_TTL_SECONDS);
      await mailer.send({ to: account.email, template: 'reset-password', data: { name: account.name, link: link('/reset', token), expiresInMinutes: 60 } });
    });
    await message(ctx, 'Check your inbox', [`If ${email} has an account, a link to choose a new password is on its way. It works once, within an hour.`]);
  });

  const renderReset = (ctx: Context, token: string, errors: string[] = []) =>
    ctx.render('reset', { title: 'Choose a new password', token, errors, hint: passwordHint(policy), minLength: policy.minLength });

  router.get('/reset', async (ctx) => {
    const token = typeof ctx.query.token === 'string' ? ctx.query.token : '';
    if (!(await tokens.peek('reset-password', token))) return invalidLink(ctx, { href: '/forgot', text: 'Send a new link' });
    await renderReset(ctx, token);
  });

  router.post('/reset', async (ctx) => {
    const form = resetForm.safeParse(ctx.request.body);
    const subject = form.success ? await tokens.peek('reset-password', form.data.token) : undefined;
    const owner = subject ? await accounts.get(subject.accountId) : undefined;
    if (!form.success || !subject || !owner) return invalidLink(ctx, { href: '/forgot', text: 'Send a new link' });
    const problems = accounts.passwordProblems(form.data.password, { email: subject.email, name: owner.name });
    if (problems.length) {
      ctx.status = 400;
      return renderReset(ctx, form.data.token, problems); // the link stays usable
    }
    if (!(await tokens.consume('reset-password', form.data.token))) return invalidLink(ctx, { href: '/forgot', text: 'Send a new link' });
    // setPassword signs the account out everywhere: sessions, grants, refresh and access tokens.
    // Two-step verification is untouched, so the next sign-in still asks for a code.
    const account = await accounts.setPassword(subject.accountId, form.data.password);
    await tokens.revokeAll('reset-password', account.id);
    // The link proved the mailbox, and the owner must not stay locked out by an attacker's guesses.
    await accounts.markEmailVerified(account.id, subject.email);
    await lockout.recordSuccess(account.email);
    await record(ctx, 'account.password.reset', account.id);
    sendLater({ to: account.email, template: 'password-changed', data: { name: account.name, when: new Date().toISOString(), signInLink } });
    await message(ctx, 'Password changed', [
      'Your new password is set, and every device that was signed in has been signed out.',
      'Sign in again with your new password.',
    ], await onwards(subject.interaction));
  });

  return router;
}
