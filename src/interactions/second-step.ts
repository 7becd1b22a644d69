/**
 * The second step of a sign-in, after the password: a code from the account's authenticator
 * (POST /interaction/:uid/mfa), or, when the application requires two-step verification from an
 * account that has none yet, setting it up in place (POST /interaction/:uid/mfa-setup) and then
 * continuing to the application with the recovery codes shown once.
 */
import type Router from '@koa/router';
import type { Context } from 'koa';
import { errors, type Interaction, type InteractionResults, type Provider } from 'oidc-provider';
import { z } from 'zod';
import type { ArtifactStore } from '../../adapters/mongodb.ts';
import { MfaError, type MfaService } from '../accounts/mfa.ts';
import type { AccountService } from '../accounts/service.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { SignInRecorder } from '../audit/sign-ins.ts';
import { ACR_MFA, reportedAcr } from '../oidc/acr.ts';
import { waitBeforeGuess, type Lockout } from '../security/lockout.ts';
import { tryAgainIn, type RateLimits } from '../security/rate-limit.ts';
import type { MfaChallenges, PendingChallenge } from './mfa-challenges.ts';

const codeForm = z.object({ _csrf: z.string(), code: z.string().max(40) }).strict();

/** How long the second step may wait after the password. */
const CHALLENGE_SECONDS = 10 * 60;

/**
 * Set on the interaction's path when a second step begins, so that showing a login page reads
 * the challenges only for a browser that has one (the challenge itself stays the authority).
 */
const PENDING_COOKIE = 'idp.mfa';

export interface SecondStepDeps {
  provider: Provider;
  store: ArtifactStore;
  accounts: AccountService;
  mfa: MfaService;
  challenges: MfaChallenges;
  rateLimits: RateLimits;
  lockout: Lockout;
  logger: Logger;
  metrics: Metrics;
  signIns: SignInRecorder;
  /** Ends the login (and, when it is plain, asks the first consent on the same interaction). */
  finishLogin: (ctx: Context, interaction: Interaction, login: NonNullable<InteractionResults['login']>) => Promise<void>;
}

export function secondStep({ provider, store, accounts, mfa, challenges, rateLimits, lockout, logger, metrics, signIns, finishLogin }: SecondStepDeps) {
  async function clientName(clientId: unknown): Promise<string | undefined> {
    return typeof clientId === 'string' ? (await provider.Client.find(clientId))?.clientName : undefined;
  }

  async function renderCode(ctx: Context, uid: string, clientId: unknown, error?: string): Promise<void> {
    await ctx.render('mfa', { title: 'Two-step verification', uid, clientName: await clientName(clientId), error });
  }

  async function renderSetup(ctx: Context, uid: string, accountId: string, clientId: unknown, error = ''): Promise<void> {
    const account = await accounts.get(accountId);
    if (!account) throw new errors.SessionNotFound('account gone');
    const enrolment = (await mfa.pendingEnrolment(accountId, account.email)) ?? await mfa.beginEnrolment(accountId, account.email);
    const name = await clientName(clientId);
    await ctx.render('mfa-setup', {
      title: 'Set up two-step verification', error, ...enrolment, action: `/interaction/${uid}/mfa-setup`,
      reason: `${name ?? 'This application'} requires two-step verification. Set it up now to continue.`,
    });
  }

  /**
   * Wrong codes lock the second step like wrong passwords lock the first, with growing waits, so
   * the 10^6 codes cannot be worked through slowly either. Each code is counted before it is
   * checked (parallel guesses cannot slip under the limit) and refunded when it is right, so only
   * failures add up.
   */
  const waitBeforeCode = (accountId: string) => waitBeforeGuess(lockout, rateLimits, `mfa:${accountId}`, 'mfaPerAccount', accountId);

  /** A refusal for too many codes: status and Retry-After set; returns the text for the page. */
  async function tooManyAttempts(ctx: Context, interaction: Interaction, accountId: string, wait: number): Promise<string> {
    await signIns.refused(ctx, { clientId: interaction.params.client_id, accountId, step: 'second_step' });
    ctx.status = 429;
    ctx.set('Retry-After', String(wait));
    return `Too many attempts. ${tryAgainIn(wait)}`;
  }

  async function recordCode(ctx: Context, interaction: Interaction, accountId: string, right: boolean): Promise<void> {
    if (!right) {
      await signIns.failed(ctx, { clientId: interaction.params.client_id, accountId, step: 'second_step', reason: 'invalid_code' });
      if ((await lockout.recordFailure(`mfa:${accountId}`)) > 0) metrics.lockouts.inc({ step: 'second_step' });
      return;
    }
    await Promise.all([lockout.recordSuccess(`mfa:${accountId}`), rateLimits.refund('mfaPerAccount', accountId)]);
  }

  /** Loads the interaction a second-step form belongs to, and the challenge it waits on. */
  async function pendingStep(ctx: Context, purpose: PendingChallenge['purpose']) {
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    if (interaction.uid !== ctx.params.uid || interaction.prompt.name !== 'login') throw new errors.SessionNotFound('interaction mismatch');
    const pending = await challenges.pending(interaction.uid);
    if (pending?.purpose !== purpose) throw new errors.SessionNotFound('no second step pending');
    return { interaction, accountId: pending.accountId };
  }

  return {
    /** After the right password: ask for a code, or for setting a factor up if one is required. */
    async begin(ctx: Context, uid: string, accountId: string, clientId: unknown, setUp: boolean): Promise<void> {
      await challenges.start(uid, accountId, CHALLENGE_SECONDS, setUp ? 'enrol' : 'verify');
      ctx.cookies.set(PENDING_COOKIE, uid, {
        path: `/interaction/${uid}`, maxAge: CHALLENGE_SECONDS * 1000, httpOnly: true, sameSite: 'lax', secure: ctx.secure,
      });
      logger.info({ uid, accountId, setUp }, 'password accepted; waiting for the second step');
      return setUp ? renderSetup(ctx, uid, accountId, clientId) : renderCode(ctx, uid, clientId);
    },

    /** A reload between the password and the second step shows that step again. */
    async resume(ctx: Context, uid: string, clientId: unknown): Promise<boolean> {
      if (ctx.cookies.get(PENDING_COOKIE) !== uid) return false;
      const pending = await challenges.pending(uid);
      if (!pending) return false;
      await (pending.purpose === 'enrol' ? renderSetup(ctx, uid, pending.accountId, clientId) : renderCode(ctx, uid, clientId));
      return true;
    },

    routes(router: Router): void {
      router.post('/:uid/mfa', async (ctx) => {
        const { interaction, accountId } = await pendingStep(ctx, 'verify');
        const { uid, params } = interaction;
        const wait = await waitBeforeCode(accountId);
        if (wait) return renderCode(ctx, uid, params.client_id, await tooManyAttempts(ctx, interaction, accountId, wait));
        const form = codeForm.safeParse(ctx.request.body);
        const factor = form.success ? await mfa.verifySignIn(accountId, form.data.code) : undefined;
        await recordCode(ctx, interaction, accountId, factor !== undefined);
        if (!factor) {
          logger.info({ uid, accountId }, 'second step failed');
          ctx.status = 401;
          return renderCode(ctx, uid, params.client_id, 'That code is not valid. Enter the current code from your app, or an unused recovery code.');
        }
        await challenges.end(uid);
        logger.info({ uid, accountId, factor }, 'sign-in succeeded with a second step');
        // RFC 8176: "otp" for the app's code; a recovery code is another factor, but not an OTP device.
        const amr = factor === 'otp' ? ['pwd', 'otp'] : ['pwd', 'mfa'];
        await finishLogin(ctx, interaction, { accountId, amr, acr: reportedAcr(ACR_MFA, params.claims), ts: Math.floor(Date.now() / 1000) });
      });

      router.post('/:uid/mfa-setup', async (ctx) => {
        const { interaction, accountId } = await pendingStep(ctx, 'enrol');
        const { uid, params } = interaction;
        const wait = await waitBeforeCode(accountId);
        if (wait) return renderSetup(ctx, uid, accountId, params.client_id, await tooManyAttempts(ctx, interaction, accountId, wait));
        const form = codeForm.safeParse(ctx.request.body);
        let codes: string[];
        try {
          codes = await mfa.confirmEnrolment(accountId, form.success ? form.data.code : '');
        } catch (error) {
          if (!(error instanceof MfaError) || error.code === 'account_not_found') throw error;
          await recordCode(ctx, interaction, accountId, false);
          ctx.status = 400;
          return renderSetup(ctx, uid, accountId, params.client_id, 'That code did not match. Enter the current code from your app.');
        }
        await Promise.all([recordCode(ctx, interaction, accountId, true), challenges.end(uid)]);
        // Other sessions signed in with the password alone (perhaps someone else's) end now; this
        // browser's stays, since the sign-in resumes with it.
        await store.endOtherSessions(accountId, interaction.session?.cookie ?? '');
        logger.info({ uid, accountId }, 'two-step verification set up during sign-in');
        await signIns.succeeded(ctx, { clientId: params.client_id, accountId, method: 'totp' });
        interaction.result = { login: { accountId, amr: ['pwd', 'otp'], acr: reportedAcr(ACR_MFA, params.claims), ts: Math.floor(Date.now() / 1000) } };
        await interaction.save(interaction.exp - Math.floor(Date.now() / 1000));
        // The codes are shown once, here; the link resumes the authorization request.
        await ctx.render('recovery-codes', {
          title: 'Your recovery codes', codes,
          next: { href: interaction.returnTo, text: `Continue to ${await clientName(params.client_id) ?? 'the application'}` },
        });
      });
    },
  };
}
