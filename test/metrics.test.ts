/**
 * /metrics in the Prometheus text format, scraped after real traffic: sign-ins that succeed and
 * fail, a lockout, tokens, OAuth errors, a rate-limit refusal; behind its bearer token on the main
 * port, or alone on METRICS_PORT.
 */
import * as oidc from 'openid-client';
import { Browser } from './support/browser.ts';
import { freePort } from '../src/local/services.ts';
import { authorizationRequest, callbackUrl, exchangeCode, openLoginPage, registerRelyingParty, signIn, submitLogin } from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const TOKEN = 'metrics-scrape-token-0123456789abcdef';
const password = 'Garnet-Harbor-Violin-42';

interface Sample { name: string; labels: Record<string, string>; value: number }

/** The exposition format's samples (comments and types skipped), checked line by line. */
function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?(?:[0-9.e+-]+|NaN|\+Inf|-Inf))$/.exec(line);
    if (!match) throw new Error(`not a sample line: ${line}`);
    const labels = Object.fromEntries([...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1]!, m[2]!]));
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

const value = (samples: Sample[], name: string, labels: Record<string, string> = {}) => samples
  .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  .reduce((sum, s) => sum + s.value, 0);

describe('on the main port, behind a bearer token', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ METRICS_TOKEN: TOKEN, LOCKOUT_THRESHOLD: '2', RATE_LIMIT_TOKEN_PER_CLIENT: '2/60' });
  });
  afterAll(async () => {
    await server?.close();
  });

  const scrape = (authorization?: string) => fetch(`${server.issuer}/metrics`, authorization ? { headers: { authorization } } : {});

  test('counts what happened, by route, outcome, grant type and error code', async () => {
    const rp = await registerRelyingParty(server, { scope: 'openid email' });
    const { email } = await server.services.accounts.create({ email: 'metered@example.com', password, emailVerified: true });
    const request = await authorizationRequest(rp, { scope: 'openid email' });
    await exchangeCode(rp, request, callbackUrl(await signIn(new Browser(), server, request.url, email, password)));

    // Two wrong passwords for another email: failures, and the second one locks it.
    for (let i = 0; i < 2; i += 1) {
      const browser = new Browser();
      const page = await openLoginPage(browser, server, (await authorizationRequest(rp, { scope: 'openid' })).url);
      expect((await submitLogin(browser, server, page, 'nobody@example.com', 'not the password')).status).toBe(401);
    }
    const machine = await registerRelyingParty(server, { grantTypes: ['client_credentials'], scope: 'openid' });
    await oidc.clientCredentialsGrant(machine.config, { scope: 'openid' });
    const badSecret = await fetch(`${server.issuer}/token`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${machine.client.client_id}:wrong`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=client_credentials',
    });
    expect(badSecret.status).toBe(401);
    await expect(oidc.clientCredentialsGrant(machine.config, { scope: 'openid' })).rejects.toBeDefined(); // third in a minute: 429

    const answer = await scrape(`Bearer ${TOKEN}`);
    expect(answer.status).toBe(200);
    expect(answer.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const samples = parse(await answer.text());

    expect(value(samples, 'idp_http_request_duration_seconds_count', { route: 'token', method: 'POST', status: '200' })).toBeGreaterThanOrEqual(2);
    expect(value(samples, 'idp_http_request_duration_seconds_count', { route: '/interaction/:uid/login', method: 'POST', status: '401' })).toBe(2);
    expect(value(samples, 'idp_http_request_duration_seconds_count', { route: 'resume' })).toBeGreaterThanOrEqual(1);
    expect(value(samples, 'idp_signins_total', { outcome: 'success', method: 'password' })).toBe(1);
    expect(value(samples, 'idp_signins_total', { outcome: 'failure', method: 'password' })).toBe(2);
    expect(value(samples, 'idp_lockouts_total', { step: 'password' })).toBe(1);
    expect(value(samples, 'idp_tokens_issued_total', { grant_type: 'authorization_code' })).toBe(1);
    expect(value(samples, 'idp_tokens_issued_total', { grant_type: 'client_credentials' })).toBe(1);
    expect(value(samples, 'idp_oauth_errors_total', { error: 'invalid_client' })).toBe(1);
    expect(value(samples, 'idp_rate_limit_refusals_total', { route: 'token' })).toBe(1);
    expect(value(samples, 'idp_mongodb_command_duration_seconds_count', { command: 'find', outcome: 'ok' })).toBeGreaterThan(0);
    expect(value(samples, 'idp_redis_limits_shared')).toBe(1);
    expect(samples.some((s) => s.name === 'nodejs_eventloop_lag_seconds')).toBe(true);
    expect(value(samples, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
    // No label carries a path, an id or an email.
    const labelValues = samples.flatMap((s) => Object.values(s.labels));
    expect(labelValues.filter((v) => /@|[0-9a-f]{32}|^\/interaction\/[^:]/.test(v))).toEqual([]);
  });

  test('without the token, or with another, nothing is told', async () => {
    expect((await scrape(`bearer ${TOKEN}`)).status).toBe(200); // RFC 6750: the scheme is case-insensitive
    for (const authorization of [undefined, 'Bearer not-the-token', `Basic ${TOKEN}`]) {
      const answer = await scrape(authorization);
      expect(answer.status).toBe(401);
      expect(await answer.text()).not.toContain('idp_');
    }
  });
});

test('with METRICS_PORT, /metrics is served there alone', async () => {
  const port = await freePort();
  const server = await startTestServer({ METRICS_PORT: String(port) });
  try {
    expect((await fetch(`${server.issuer}/metrics`)).status).toBe(404);
    const answer = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(answer.status).toBe(200);
    expect(parse(await answer.text()).some((s) => s.name === 'idp_http_request_duration_seconds_count')).toBe(true);
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(404);
  } finally {
    await server.close();
  }
});
