/**
 * Conformance of the provider's protocol behaviour (issue 8), through real HTTP, the hosted pages
 * and openid-client: acr_values as a preference and an essential acr, POST /auth and
 * /session/end with the cookies they need, ID-token claims per client, consent remembered per
 * account and client, an admin CLI that leaves a running server alone, rate limits that do not
 * lock out the people they protect, and introspection limited to the token's client or the
 * resource server it is meant for.
 */
import { jest } from '@jest/globals';
import * as oidc from 'openid-client';
import { generate } from 'otplib';
import { readPayload } from '../adapters/mongodb.ts';
import { accountModel } from '../src/accounts/model.ts';
import { loadConfig, RATE_LIMIT_NAMES } from '../src/config.ts';
import { ACR_MFA, ACR_PASSWORD } from '../src/oidc/acr.ts';
import { Browser, readForm } from './support/browser.ts';
import { runScript, type ScriptResult } from './support/cli.ts';
import { testRedisUrl } from './support/env.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, POST_LOGOUT_URI, registerRelyingParty, REDIRECT_URI, type AuthRequest, type RelyingParty,
} from './support/flows.ts';
import { pageText, walk, type Journey } from './support/hosted-pages.ts';
import { startTestServer, type TestServer } from './support/server.ts';

jest.setTimeout(120_000);

const password = 'Tundra-Marble-Quiver-58-Lantern';
let server: TestServer;
let rp: RelyingParty;

beforeAll(async () => {
  server = await startTestServer();
  rp = await registerRelyingParty(server);
});

afterAll(async () => {
  await server?.close();
});

let serial = 0;

/** A new password-only account with a unique address. */
async function newAccount(label: string, name = 'Conformance Person') {
  serial += 1;
  return server.services.accounts.create({ email: `${label}-${serial}@example.com`, password, emailVerified: true, name });
}

/** An account with TOTP on, enrolled with the previous step's code so the current one is left for a sign-in. */
async function newAccountWithTotp(label: string) {
  const account = await newAccount(label);
  const { secret } = await server.services.mfa.beginEnrolment(account.id, account.email);
  await server.services.mfa.confirmEnrolment(account.id, await generate({ secret, epoch: Math.floor(Date.now() / 1000) - 30 }));
  return { ...account, secret };
}

/** An authorization request that sends `prompt` only when given (flows.ts always sends prompt=consent). */
async function request(client: RelyingParty, params: Record<string, string> = {}): Promise<AuthRequest> {
  const built = await authorizationRequest(client, params);
  if (!('prompt' in params)) built.url.searchParams.delete('prompt');
  return built;
}

/** Starts `req` in a fresh browser and walks the hosted pages as `email`. */
async function signInFresh(client: RelyingParty, req: AuthRequest, email: string, options: Parameters<typeof walk>[5] = {}) {
  const browser = new Browser();
  const journey = await walk(browser, server, await browser.get(req.url), email, password, options);
  return { browser, journey };
}

function tokensOf(client: RelyingParty, req: AuthRequest, journey: Journey) {
  return exchangeCode(client, req, callbackUrl(journey.response));
}

const jwtPayload = (jwt: string) => JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;

describe('acr_values is a preference, never a refusal', () => {
  for (const acrValues of [`${ACR_PASSWORD} ${ACR_MFA}`, ACR_MFA]) {
    test(`acr_values "${acrValues}": password-only accounts sign in with ${ACR_PASSWORD}, TOTP accounts with ${ACR_MFA}`, async () => {
      const plain = await newAccount('preference');
      const plainRequest = await request(rp, { scope: 'openid', acr_values: acrValues });
      const { journey } = await signInFresh(rp, plainRequest, plain.email);
      expect(journey.steps).toEqual(['login', 'consent']);
      const plainClaims = (await tokensOf(rp, plainRequest, journey)).claims()!;
      expect(plainClaims).toMatchObject({ sub: plain.id, acr: ACR_PASSWORD });
      expect(plainClaims.amr).toEqual(['pwd']);

      const withTotp = await newAccountWithTotp('preference-totp');
      const totpRequest = await request(rp, { scope: 'openid', acr_values: acrValues });
      const second = await signInFresh(rp, totpRequest, withTotp.email, { code: () => generate({ secret: withTotp.secret }) });
      expect(second.journey.steps).toEqual(['login', 'code', 'consent']);
      const totpClaims = (await tokensOf(rp, totpRequest, second.journey)).claims()!;
      expect(totpClaims).toMatchObject({ sub: withTotp.id, acr: ACR_MFA });
      expect(totpClaims.amr).toEqual(expect.arrayContaining(['pwd', 'otp']));
    });
  }
});

describe('an essential acr', () => {
  const essential = (values: string[]) => JSON.stringify({ id_token: { acr: { essential: true, values } } });

  /**
   * On the in-place setup page: checks it, confirms the secret it shows with a current code, and
   * follows "Continue to <client>" from the recovery codes back to the client; returns the tokens.
   */
  async function completeSetup(browser: Browser, client: RelyingParty, req: AuthRequest, setupPage: Response, email: string) {
    const html = await setupPage.clone().text();
    expect(html).toMatch(/<img src="data:image\/png;base64,/);
    const form = readForm(html, setupPage.url);
    expect(new URL(form.action).pathname).toMatch(/^\/interaction\/[^/]+\/mfa-setup$/);
    const secret = /<code>([A-Z2-7]+)<\/code>/.exec(html)![1]!;
    const codesPage = await browser.post(form.action, { ...form.fields, code: await generate({ secret }) });
    expect(codesPage.status).toBe(200);
    const codesHtml = await codesPage.text();
    expect([...codesHtml.matchAll(/<li><code>[a-z2-7]{5}-[a-z2-7]{5}<\/code><\/li>/g)]).toHaveLength(10);
    const link = /<a class="button" href="([^"]+)">Continue to ([^<]+)<\/a>/.exec(codesHtml);
    expect(link?.[2]).toBe(client.client.client_name);
    const resumed = await walk(browser, server, await browser.get(new URL(link![1]!.replace(/&amp;/g, '&'), server.issuer)), email, password);
    expect(resumed.steps).not.toContain('login'); // the setup finished the sign-in
    return tokensOf(client, req, resumed);
  }

  test('discovery advertises the claims parameter', async () => {
    expect(rp.config.serverMetadata().claims_parameter_supported).toBe(true);
    expect(rp.config.serverMetadata().acr_values_supported).toEqual(expect.arrayContaining([ACR_PASSWORD, ACR_MFA]));
  });

  test(`essential ${ACR_MFA}: a password-only account sets up two-step verification in place and returns with ${ACR_MFA}`, async () => {
    const plain = await newAccount('essential');
    const req = await request(rp, { scope: 'openid', claims: essential([ACR_MFA]) });
    const { browser, journey } = await signInFresh(rp, req, plain.email);
    expect(journey.steps).toEqual(['login', 'setup']);
    expect(journey.response.headers.get('location')).toBeNull();

    const tokens = await completeSetup(browser, rp, req, journey.response, plain.email);
    expect(tokens.claims()).toMatchObject({ sub: plain.id, acr: ACR_MFA });
    expect(tokens.claims()!.amr).toEqual(expect.arrayContaining(['otp']));
    expect(await server.services.mfa.isEnabled(plain.id)).toBe(true);
  });

  test('an essential acr with only an unknown value ends at the client with access_denied', async () => {
    const req = await request(rp, { scope: 'openid', claims: essential(['urn:example:unknown']) });
    const browser = new Browser();
    const back = await browser.follow(await browser.get(req.url), server.issuer);
    const callback = callbackUrl(back);
    expect(`${callback.origin}${callback.pathname}`).toBe(REDIRECT_URI);
    expect(callback.searchParams.get('error')).toBe('access_denied');
    expect(callback.searchParams.get('state')).toBe(req.state);
    expect(callback.searchParams.get('code')).toBeNull();
  });

  test('a client registered with requireMfa also sets up two-step verification in place', async () => {
    const strict = await registerRelyingParty(server, { name: 'Strict RP', requireMfa: true });
    const plain = await newAccount('require-mfa');
    const req = await request(strict, { scope: 'openid' });
    const { browser, journey } = await signInFresh(strict, req, plain.email);
    expect(journey.steps).toEqual(['login', 'setup']);
    expect(await pageText(journey.response)).toContain('Strict RP requires two-step verification');

    const tokens = await completeSetup(browser, strict, req, journey.response, plain.email);
    expect(tokens.claims()).toMatchObject({ sub: plain.id, acr: ACR_MFA });
  });
});

describe('POST to /auth and /session/end', () => {
  const liveCookies = (browser: Browser, name: string) =>
    browser.setCookieHeaders.filter((header) => header.startsWith(`${name}=`) && !header.startsWith(`${name}=;`));

  test('a form-POSTed authorization request works like GET; the session cookie is SameSite=None; Secure, interactions stay Lax', async () => {
    const person = await newAccount('post-auth');
    const req = await request(rp, { scope: 'openid email' });
    const browser = new Browser();
    const posted = await browser.post(rp.config.serverMetadata().authorization_endpoint!, req.url.searchParams.toString());
    expect(posted.status).toBeGreaterThanOrEqual(300);
    expect(posted.status).toBeLessThan(400);
    const journey = await walk(browser, server, posted, person.email, password);
    expect(journey.steps).toEqual(['login', 'consent']);
    const callback = callbackUrl(journey.response);
    expect(callback.searchParams.get('iss')).toBe(server.issuer);
    const tokens = await exchangeCode(rp, req, callback);
    expect(tokens.claims()).toMatchObject({ sub: person.id, email: person.email });

    const session = liveCookies(browser, '_session');
    expect(session.length).toBeGreaterThan(0);
    for (const header of session) {
      expect(header).toMatch(/;\s*samesite=none/i);
      expect(header).toMatch(/;\s*secure/i);
      expect(header).toMatch(/;\s*httponly/i);
    }
    const interaction = [...liveCookies(browser, '_interaction'), ...liveCookies(browser, '_interaction_resume')];
    expect(interaction.length).toBeGreaterThan(0);
    for (const header of interaction) expect(header).toMatch(/;\s*samesite=lax/i);
  });

  test('a form-POSTed logout request shows the confirmation; "Sign out" returns to the post-logout URI with the state', async () => {
    const person = await newAccount('post-logout');
    const req = await request(rp, { scope: 'openid' });
    const { browser, journey } = await signInFresh(rp, req, person.email);
    const tokens = await tokensOf(rp, req, journey);

    const logoutPage = await browser.post(rp.config.serverMetadata().end_session_endpoint!, {
      id_token_hint: tokens.id_token!, post_logout_redirect_uri: POST_LOGOUT_URI, state: 'posted-bye',
    });
    expect(logoutPage.status).toBe(200);
    const html = await logoutPage.clone().text();
    expect(html).toMatch(/<form[^>]*id="op\.logoutForm"/);
    expect(html).toMatch(/<button[^>]*form="op\.logoutForm"[^>]*name="logout"[^>]*value="yes"[^>]*>\s*Sign out/);
    const form = readForm(html, logoutPage.url);
    const out = await browser.follow(await browser.post(form.action, { ...form.fields, logout: 'yes' }), server.issuer);
    const landing = callbackUrl(out);
    expect(`${landing.origin}${landing.pathname}`).toBe(POST_LOGOUT_URI);
    expect(landing.searchParams.get('state')).toBe('posted-bye');

    // Signed out: the next request asks for the password again.
    const again = await walk(browser, server, await browser.get((await request(rp, { scope: 'openid' })).url), person.email, password);
    expect(again.steps[0]).toBe('login');
  });
});

describe('ID-token claims', () => {
  test('scope "openid profile email" puts email, email_verified and name in the ID token itself', async () => {
    const person = await newAccount('claims-full', 'Claire Full');
    const req = await request(rp, { scope: 'openid profile email' });
    const { journey } = await signInFresh(rp, req, person.email);
    expect((await tokensOf(rp, req, journey)).claims()).toMatchObject({
      sub: person.id, email: person.email, email_verified: true, name: 'Claire Full',
    });
  });

  test('a client registered with idTokenClaims "minimal" gets them from userinfo only', async () => {
    const minimal = await registerRelyingParty(server, { name: 'Minimal RP', idTokenClaims: 'minimal' });
    const person = await newAccount('claims-minimal', 'Mina Minimal');
    const req = await request(minimal, { scope: 'openid profile email' });
    const { journey } = await signInFresh(minimal, req, person.email);
    const tokens = await tokensOf(minimal, req, journey);
    const claims = tokens.claims()!;
    expect(claims).toMatchObject({ sub: person.id, acr: ACR_PASSWORD });
    for (const name of ['email', 'email_verified', 'name']) expect(claims).not.toHaveProperty(name);
    expect(await oidc.fetchUserInfo(minimal.config, tokens.access_token, person.id)).toMatchObject({
      sub: person.id, email: person.email, email_verified: true, name: 'Mina Minimal',
    });
  });
});

describe('consent is asked once per account and client', () => {
  let app: RelyingParty;
  let person: Awaited<ReturnType<typeof newAccount>>;

  beforeAll(async () => {
    app = await registerRelyingParty(server, { name: 'Remembering App' });
    person = await newAccount('remembered');
  });

  const signInOnce = async (params: Record<string, string>) => {
    const req = await request(app, params);
    const { browser, journey } = await signInFresh(app, req, person.email);
    return { browser, journey, tokens: await tokensOf(app, req, journey) };
  };
  const grants = () => server.services.store.grantsOf(person.id, app.client.client_id);

  test('three sign-ins in fresh sessions: consent the first time only, one grant, the app listed once', async () => {
    const steps = [];
    for (let i = 0; i < 3; i += 1) steps.push((await signInOnce({ scope: 'openid email' })).journey.steps);
    expect(steps).toEqual([['login', 'consent'], ['login'], ['login']]);
    expect(await grants()).toHaveLength(1);

    const browser = new Browser();
    const accountPage = await walk(browser, server, await browser.get(`${server.issuer}/account`), person.email, password);
    expect(accountPage.steps).toEqual(['login']);
    expect(new URL(accountPage.response.url).pathname).toBe('/account');
    expect(accountPage.response.status).toBe(200);
    expect((await pageText(accountPage.response)).match(/Remove access for Remembering App/g)).toHaveLength(1);
  });

  test('prompt=consent asks again; a new scope asks again, for the new scope only', async () => {
    expect((await signInOnce({ scope: 'openid email', prompt: 'consent' })).journey.steps).toEqual(['login', 'consent']);
    const wider = await signInOnce({ scope: 'openid email profile' });
    expect(wider.journey.steps).toEqual(['login', 'consent']);
    expect(wider.journey.consentText).toContain('See your name and profile');
    expect(wider.journey.consentText).not.toContain('See your email address');
    expect(await grants()).toHaveLength(1);
  });

  test('after "Stay signed in" at RP-initiated logout, the next sign-in asks no consent', async () => {
    const { browser, journey, tokens } = await signInOnce({ scope: 'openid email profile' });
    expect(journey.steps).toEqual(['login']);
    const logoutUrl = oidc.buildEndSessionUrl(app.config, { id_token_hint: tokens.id_token!, post_logout_redirect_uri: POST_LOGOUT_URI, state: 'stay' });
    const logoutPage = await browser.follow(await browser.get(logoutUrl), server.issuer);
    expect(logoutPage.status).toBe(200);
    const form = readForm(await logoutPage.text(), logoutPage.url);
    expect(form.fields).not.toHaveProperty('logout');
    const stayed = callbackUrl(await browser.follow(await browser.post(form.action, form.fields), server.issuer));
    expect(`${stayed.origin}${stayed.pathname}`).toBe(POST_LOGOUT_URI);
    expect(stayed.searchParams.get('state')).toBe('stay');

    expect((await signInOnce({ scope: 'openid email profile' })).journey.steps).toEqual(['login']);
    expect(await grants()).toHaveLength(1);
  });

  test('a first-party client never asks, even with prompt=consent', async () => {
    const own = await registerRelyingParty(server, { name: 'Own App', firstParty: true });
    const someone = await newAccount('first-party');
    const attempts: Record<string, string>[] = [{ scope: 'openid email' }, { scope: 'openid email profile', prompt: 'consent' }];
    for (const params of attempts) {
      const req = await request(own, params);
      const { journey } = await signInFresh(own, req, someone.email);
      expect(journey.steps).toEqual(['login']);
      expect((await tokensOf(own, req, journey)).claims()!.sub).toBe(someone.id);
    }
  });
});

describe('the admin CLI leaves a running server alone', () => {
  /** Runs a CLI script as its own process, configured for another issuer and port than the server's. */
  async function cli(script: 'client' | 'user', ...args: string[]): Promise<ScriptResult> {
    return runScript(script, args, {
      ...process.env, MONGODB_URI: server.services.config.mongodbUri!, REDIS_URL: testRedisUrl(), NODE_ENV: 'test', LOG_LEVEL: 'error',
      ISSUER: 'http://elsewhere.example:4000', PORT: '4000',
    });
  }

  // Read from the database, not through the adapter, which may serve clients from a cache.
  const storedConsole = async () => readPayload((await server.services.store.collection('Client').findOne({ _id: 'account-console' }))!.payload);
  const discovery = async () => (await fetch(`${server.issuer}/.well-known/openid-configuration`)).json();

  test('list commands change nothing; the built-in client cannot be updated or deleted; /account still signs in', async () => {
    const consoleBefore = await storedConsole();
    expect(consoleBefore.redirect_uris).toEqual([`${server.issuer}/account/callback`]);
    const discoveryBefore = await discovery();

    const [clients, users] = await Promise.all([cli('client', 'list'), cli('user', 'list')]);
    expect({ code: clients.code, stderr: clients.stderr }).toEqual({ code: 0, stderr: '' });
    expect({ code: users.code, stderr: users.stderr }).toEqual({ code: 0, stderr: '' });
    expect((JSON.parse(clients.stdout) as { client_id: string }[]).map((c) => c.client_id)).toContain('account-console');
    expect(Array.isArray(JSON.parse(users.stdout))).toBe(true);

    const [update, remove] = await Promise.all([cli('client', 'update', 'account-console', '--name', 'X'), cli('client', 'delete', 'account-console')]);
    for (const refused of [update, remove]) {
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/^error: .*account-console/);
    }

    expect((await storedConsole()).redirect_uris).toEqual([`${server.issuer}/account/callback`]);
    expect(await storedConsole()).toEqual(consoleBefore);
    expect(await discovery()).toEqual(discoveryBefore);

    const person = await newAccount('cli-console');
    const browser = new Browser();
    const start = await browser.get(`${server.issuer}/account`);
    expect(start.headers.get('location')).toBe('/account/sign-in');
    const signedIn = await walk(browser, server, start, person.email, password);
    expect(signedIn.steps).toEqual(['login']);
    expect(new URL(signedIn.response.url).pathname).toBe('/account');
    expect(signedIn.response.status).toBe(200);
    expect(await pageText(signedIn.response)).toContain(person.email);
  });
});

describe('with the default limits, people who sign in correctly are never refused', () => {
  let strict: TestServer;
  let client: RelyingParty;
  const crowd = 300;

  beforeAll(async () => {
    const defaults = loadConfig({});
    const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
    strict = await startTestServer({
      ...Object.fromEntries(RATE_LIMIT_NAMES.map((name) => [`RATE_LIMIT_${snake(name)}`, `${defaults.rateLimits[name].points}/${defaults.rateLimits[name].seconds}`])),
      LOCKOUT_THRESHOLD: String(defaults.lockout.threshold),
    });
    expect(strict.services.config.rateLimits).toEqual(defaults.rateLimits);
    expect(strict.services.config.lockout).toEqual(defaults.lockout);
    // First party: no consent page, so each sign-in is the login alone.
    client = await registerRelyingParty(strict, { name: 'Crowd App', firstParty: true });
    // One argon2 hash, shared by every account: creating 300 through the hasher would take minutes.
    const first = await strict.services.accounts.create({ email: 'crowd-0@example.com', password, emailVerified: true });
    const accounts = accountModel(strict.services.connection);
    const { passwordHash } = (await accounts.findById(first.id).lean())!;
    await accounts.insertMany(Array.from({ length: crowd - 1 }, (_, i) => ({ email: `crowd-${i + 1}@example.com`, passwordHash, emailVerified: true })));
  });

  afterAll(async () => {
    await strict?.close();
  });

  /** 'code' when the sign-in reached the client, otherwise the status it stopped at. */
  async function outcome(email: string, secret = password): Promise<string> {
    const browser = new Browser();
    const req = await authorizationRequest(client, { scope: 'openid' });
    const journey = await walk(browser, strict, await browser.get(req.url), email, secret);
    const location = journey.response.headers.get('location');
    return location && new URL(location).searchParams.get('code') ? 'code' : String(journey.response.status);
  }

  async function inParallel<T>(count: number, concurrency: number, task: (index: number) => Promise<T>): Promise<T[]> {
    const results: T[] = [];
    let next = 0;
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const index = next;
        next += 1;
        results[index] = await task(index);
      }
    }));
    return results;
  }

  test('300 people from one address sign in within a minute, all successfully', async () => {
    const started = Date.now();
    const outcomes = await inParallel(crowd, 8, (i) => outcome(`crowd-${i}@example.com`));
    const elapsed = Date.now() - started;
    expect(outcomes.filter((o) => o !== 'code')).toEqual([]);
    // Otherwise the per-minute windows would have reset in between and proved nothing.
    expect(elapsed).toBeLessThan(60_000);
  }, 180_000);

  test('one person signing in correctly 15 times in a row always gets in', async () => {
    const outcomes = [];
    for (let i = 0; i < 15; i += 1) outcomes.push(await outcome('crowd-0@example.com'));
    expect(outcomes).toEqual(Array(15).fill('code'));
  });

  test('20 wrong passwords lock the account (429 with Retry-After), even for the right password; others still get in', async () => {
    const email = 'crowd-1@example.com';
    const browser = new Browser();
    const req = await authorizationRequest(client, { scope: 'openid' });
    const loginPage = await browser.follow(await browser.get(req.url), strict.issuer);
    const form = readForm(await loginPage.text(), loginPage.url);
    const attempt = (secret: string) => browser.post(form.action, { ...form.fields, email, password: secret });

    const answers: { status: number; retryAfter: string | null }[] = [];
    for (let i = 0; i < 20; i += 1) {
      const answer = await attempt(`Wrong-Guess-${i}-Quarry-Lemon`);
      answers.push({ status: answer.status, retryAfter: answer.headers.get('retry-after') });
    }
    expect(answers[0]).toEqual({ status: 401, retryAfter: null });
    const firstLocked = answers.findIndex((a) => a.status === 429);
    expect(firstLocked).toBeGreaterThan(0);
    for (const locked of answers.slice(firstLocked)) {
      expect(locked.status).toBe(429);
      expect(Number(locked.retryAfter)).toBeGreaterThanOrEqual(1);
    }

    const right = await attempt(password);
    expect(right.status).toBe(429);
    expect(Number(right.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(right.headers.get('location')).toBeNull();
    expect(await outcome(email)).toBe('429');

    expect(await outcome('crowd-2@example.com')).toBe('code');
  });
});

describe('introspection', () => {
  /** The introspection answer; an error answer is returned as its body so a failure shows what came back. */
  const introspect = (client: RelyingParty, token: string) => oidc.tokenIntrospection(client.config, token).catch((error: unknown) => {
    const { status, error: code, error_description: description } = error as { status?: number; error?: string; error_description?: string };
    if (code === undefined) throw error;
    return { status, error: code, error_description: description };
  });

  let unrelated: RelyingParty;
  let resourceServer: RelyingParty;
  let audience: string;
  let person: Awaited<ReturnType<typeof newAccount>>;

  beforeAll(async () => {
    unrelated = await registerRelyingParty(server, { name: 'Unrelated B' });
    audience = server.services.config.documents.audience;
    resourceServer = await registerRelyingParty(server, { name: 'Documents API C', introspectFor: [audience] });
    person = await newAccount('introspection');
  });

  test('a userinfo access token is described to its own client only; to others as {active: false}', async () => {
    const req = await request(rp, { scope: 'openid email' });
    const tokens = await tokensOf(rp, req, (await signInFresh(rp, req, person.email)).journey);
    expect(await introspect(rp, tokens.access_token)).toMatchObject({ active: true, sub: person.id, client_id: rp.client.client_id });
    expect(await introspect(unrelated, tokens.access_token)).toEqual({ active: false });
    // Registered for the documents API's audience, not for this token's.
    expect(await introspect(resourceServer, tokens.access_token)).toEqual({ active: false });
  });

  test('a documents API JWT is described to the client registered to introspect for its audience, to others as {active: false}', async () => {
    expect(audience).toBe(`${server.issuer}/api`);
    const docsApp = await registerRelyingParty(server, { name: 'Docs App', scope: 'openid documents:read' });
    const req = await request(docsApp, { scope: 'openid documents:read' });
    const tokens = await tokensOf(docsApp, req, (await signInFresh(docsApp, req, person.email)).journey);
    expect(jwtPayload(tokens.access_token)).toMatchObject({ aud: audience, sub: person.id, scope: 'documents:read' });
    // Both answers first, so a failure shows each.
    const answers = { resourceServer: await introspect(resourceServer, tokens.access_token), unrelated: await introspect(unrelated, tokens.access_token) };
    expect(answers).toEqual({
      resourceServer: expect.objectContaining({ active: true, sub: person.id, client_id: docsApp.client.client_id, aud: audience, scope: 'documents:read' }),
      unrelated: { active: false },
    });
  });
});
