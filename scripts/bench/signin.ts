/**
 * Scripted browsers doing complete authorization-code sign-ins (login, consent the first time,
 * token), and the same with the TOTP second step (signin_mfa). A page other than the expected one,
 * or a non-2xx answer, fails the sign-in.
 *
 * A TOTP code is accepted once per account and 30-second step (the current or the previous one),
 * so signin_mfa seeds a pool of accounts with two-step verification turned on (one argon2 hash
 * each; the seeding time is printed), enrolled with the previous step's code so the current step
 * stays free, and gives each sign-in an idle account round-robin with a step it has not used yet:
 * the bench never replays a code. Should the pool run dry the workers wait for the next step and
 * the bench says so (the rate is then understated; raise BENCH_MFA_ACCOUNTS).
 */
import { createHash, randomBytes } from 'node:crypto';
import { generate } from 'otplib';
import { MfaError } from '../../src/accounts/mfa.ts';
import type { Services } from '../../src/services.ts';
import { Browser, readForm, type Form } from '../../test/support/browser.ts';
import { options, say, TOTP_PERIOD } from './options.ts';
import { basicAuth, FORM, type Sample } from './sample.ts';
import { percentile } from './stats.ts';

/** The relying party the sign-ins are for, and the one password every bench account has. */
export interface SignInTarget { issuer: string; client: { client_id: string; client_secret?: string | undefined }; password: string }

const REDIRECT_URI = 'http://127.0.0.1:9/cb';
/** A sign-in is only given a previous-step code to plan with when this much of the current step is left. */
const PREVIOUS_STEP_MARGIN_MS = 10_000;
const SEED_CONCURRENCY = 4;

/**
 * The form of the page `response` should be: a 200 whose first form posts to `/interaction/<uid>/<step>`.
 * Anything else (an error page, the same page again with a refusal, a redirect) fails the sign-in.
 */
async function expectForm(response: Response, step: string): Promise<Form> {
  const html = await response.text();
  if (response.status !== 200) {
    // The page's title and error message say more than its first bytes (the stylesheet).
    const said = [/<title>([^<]*)<\/title>/i.exec(html)?.[1], /<p class="error"[^>]*>([^<]*)<\/p>/i.exec(html)?.[1]].filter(Boolean).join(': ');
    throw new Error(`expected the ${step} page, got ${response.status} from ${response.url}${said ? ` (${said})` : html ? `: ${html.slice(0, 300)}` : ''}`);
  }
  const form = readForm(html, response.url);
  if (!new URL(form.action).pathname.endsWith(`/${step}`)) throw new Error(`expected the ${step} page, got a form posting to ${form.action}`);
  return form;
}

/**
 * One complete sign-in: authorize, login page, password, the code page when `totp` is given (it
 * yields the code to type), consent, code for tokens.
 */
export async function signInOnce(target: SignInTarget, email: string, totp?: () => Promise<string>): Promise<void> {
  const { issuer, client } = target;
  const browser = new Browser();
  const auth = new URL(`${issuer}/auth`);
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  auth.search = new URLSearchParams({
    client_id: client.client_id, response_type: 'code', scope: 'openid email', redirect_uri: REDIRECT_URI,
    code_challenge: challenge, code_challenge_method: 'S256', state: 'bench',
  }).toString();
  const login = await browser.follow(await browser.get(auth), issuer);
  const loginForm = await expectForm(login, 'login');
  let next = await browser.follow(await browser.post(loginForm.action, { ...loginForm.fields, email, password: target.password }), issuer);
  if (totp) {
    const mfaForm = await expectForm(next, 'mfa');
    next = await browser.follow(await browser.post(mfaForm.action, { ...mfaForm.fields, code: await totp() }), issuer);
  }
  // Consent is asked once per account and client; later sign-ins go straight back with a code.
  const remembered = next.headers.get('location')?.startsWith(REDIRECT_URI) === true;
  const back = remembered ? next : await (async () => {
    const consentForm = await expectForm(next, 'consent');
    return browser.follow(await browser.post(consentForm.action, { ...consentForm.fields, decision: 'allow' }), issuer);
  })();
  const location = back.headers.get('location');
  const code = location ? new URL(location).searchParams.get('code') : null;
  if (!code) throw new Error(`sign-in ended without a code (${back.status}${location ? ` to ${location}` : ''})`);
  const token = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(client.client_id, client.client_secret!), ...FORM },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier }),
  });
  if (token.status !== 200) throw new Error(`token endpoint answered ${token.status}`);
}

/**
 * Runs sign-ins from BENCH_SIGNIN_CONCURRENCY workers for BENCH_SECONDS. `next` gives a worker its
 * next sign-in (untimed: it may wait for an account), or nothing when none can start before the deadline.
 */
export async function signIns(name: string, next: (deadline: number) => Promise<(() => Promise<void>) | undefined>): Promise<Sample> {
  const latencies: number[] = [];
  let errors = 0;
  const deadline = Date.now() + options.seconds * 1000;
  const begin = performance.now();
  await Promise.all(Array.from({ length: options.signinConcurrency }, async () => {
    while (Date.now() < deadline) {
      const signIn = await next(deadline);
      if (!signIn) break;
      const t0 = performance.now();
      try {
        await signIn();
        latencies.push(performance.now() - t0);
      } catch (error) {
        errors += 1;
        if (errors <= 3) say(`${name}: sign-in failed: ${(error as Error).message}`);
      }
    }
  }));
  const elapsed = (performance.now() - begin) / 1000;
  latencies.sort((a, b) => a - b);
  return { ops: latencies.length, handled: latencies.length, errors, seconds: elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

/** An account of the signin_mfa pool; usedSteps: the TOTP steps whose code it has used (or will). */
interface MfaAccount { email: string; secret: string; usedSteps: Set<number>; busy: boolean }

function totpStep(ms = Date.now()): number {
  return Math.floor(ms / 1000 / TOTP_PERIOD);
}

function totpCode(secret: string, step: number): Promise<string> {
  return generate({ secret, epoch: step * TOTP_PERIOD });
}

/**
 * A step the provider accepts a code of now that `account` has not used, the previous one first
 * (but only with `marginMs` of the current step left, for the code to arrive in time).
 */
function freeStep(account: MfaAccount, marginMs: number, now = Date.now()): number | undefined {
  const current = totpStep(now);
  if ((current + 1) * TOTP_PERIOD * 1000 - now >= marginMs && !account.usedSteps.has(current - 1)) return current - 1;
  return account.usedSteps.has(current) ? undefined : current;
}

/**
 * Creates `count` accounts with two-step verification on, each enrolled with the code of the
 * previous time step so that the current one stays free for the benchmark.
 */
export async function seedMfaAccounts(seed: Services, count: number, password: string): Promise<MfaAccount[]> {
  const begin = performance.now();
  const accounts: MfaAccount[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, async () => {
    while (next < count) {
      const email = `bench-mfa-${next++}@example.com`;
      const { id } = await seed.accounts.create({ email, password });
      const { secret } = await seed.mfa.beginEnrolment(id, email);
      // Retried once: the step may change between computing the code and the service checking it.
      for (let attempt = 0; ; attempt += 1) {
        const step = totpStep() - 1;
        try {
          await seed.mfa.confirmEnrolment(id, await totpCode(secret, step));
          accounts.push({ email, secret, usedSteps: new Set([step]), busy: false });
          break;
        } catch (error) {
          if (attempt > 0 || !(error instanceof MfaError && error.code === 'mfa_invalid_code')) throw error;
        }
      }
    }
  }));
  say(`seeded ${count} accounts with two-step verification in ${((performance.now() - begin) / 1000).toFixed(1)} s`);
  return accounts;
}

/**
 * Hands out the signin_mfa accounts round-robin: an idle account with a step left, whose code is
 * chosen when the code page is reached. When every account has used both steps the provider
 * accepts, workers wait for the next step and report() says so.
 */
export function mfaPool(target: SignInTarget, accounts: MfaAccount[]) {
  let cursor = 0;
  let dry = 0;
  let waitedMs = 0;
  let previousStepCodes = 0;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  return {
    async take(deadline: number): Promise<(() => Promise<void>) | undefined> {
      for (;;) {
        let busyWithSteps = false;
        for (let i = 0; i < accounts.length; i += 1) {
          const account = accounts[(cursor + i) % accounts.length]!;
          if (freeStep(account, PREVIOUS_STEP_MARGIN_MS) === undefined) continue;
          if (account.busy) {
            busyWithSteps = true;
            continue;
          }
          cursor = (cursor + i + 1) % accounts.length;
          account.busy = true;
          return () => signInOnce(target, account.email, async () => {
            // One second is plenty for the POST to reach the provider on loopback.
            const step = freeStep(account, 1000);
            if (step === undefined) throw new Error(`${account.email}: no unused TOTP step left when the code page came (more than ${PREVIOUS_STEP_MARGIN_MS / 1000 - 1} s after the sign-in began)`);
            account.usedSteps.add(step);
            if (step < totpStep()) previousStepCodes += 1;
            return totpCode(account.secret, step);
          }).finally(() => { account.busy = false; });
        }
        const now = Date.now();
        const wait = busyWithSteps ? 5 : (totpStep(now) + 1) * TOTP_PERIOD * 1000 - now + 50;
        if (!busyWithSteps) {
          dry += 1;
          waitedMs += Math.min(wait, deadline - now);
        }
        if (now + wait >= deadline) return undefined;
        await sleep(wait);
      }
    },
    report(): void {
      say(`signin_mfa: ${accounts.length} accounts; ${previousStepCodes} codes typed were of the previous time step`);
      if (dry > 0) {
        say(`signin_mfa: THE ACCOUNT POOL RAN DRY ${dry} times (waiting ${(waitedMs / 1000).toFixed(1)} worker-seconds in all for the next TOTP step): the rate is understated; raise BENCH_MFA_ACCOUNTS (now ${accounts.length})`);
      }
    },
  };
}
