/** Relying-party side of the end-to-end tests: openid-client plus the hosted pages. */
import * as oidc from 'openid-client';
import type { ClientInput, StoredClient } from '../../src/oidc/clients.ts';
import { Browser, readForm } from './browser.ts';
import type { TestServer } from './server.ts';

export const REDIRECT_URI = 'http://127.0.0.1:9/callback';
export const POST_LOGOUT_URI = 'http://127.0.0.1:9/signed-out';

export interface RelyingParty {
  client: StoredClient;
  config: oidc.Configuration;
}

/** `authFor` picks how the relying party authenticates at the token endpoint (default: Basic, or none for public clients). */
export async function registerRelyingParty(
  server: TestServer, input: Partial<ClientInput> = {}, authFor?: (client: StoredClient) => oidc.ClientAuth,
): Promise<RelyingParty> {
  const client = await server.services.clients.create({
    name: 'Test RP',
    redirectUris: [REDIRECT_URI],
    postLogoutRedirectUris: [POST_LOGOUT_URI],
    ...input,
  });
  const auth = authFor ? authFor(client) : client.client_secret ? oidc.ClientSecretBasic(client.client_secret) : oidc.None();
  const config = await oidc.discovery(new URL(server.issuer), client.client_id, undefined, auth, {
    execute: [oidc.allowInsecureRequests],
  });
  return { client, config };
}

export interface AuthRequest {
  url: URL;
  verifier: string;
  state: string;
  nonce: string;
}

export async function authorizationRequest(rp: RelyingParty, params: Record<string, string> = {}): Promise<AuthRequest> {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const url = oidc.buildAuthorizationUrl(rp.config, {
    redirect_uri: REDIRECT_URI,
    scope: 'openid profile email offline_access',
    prompt: 'consent',
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    ...params,
  });
  return { url, verifier, state, nonce };
}

/** GETs the authorization URL and returns the login page's response (following redirects). */
export async function openLoginPage(browser: Browser, server: TestServer, url: URL): Promise<Response> {
  return browser.follow(await browser.get(url), server.issuer);
}

export async function submitLogin(browser: Browser, server: TestServer, page: Response, email: string, password: string): Promise<Response> {
  const form = readForm(await page.text(), page.url);
  return browser.post(form.action, { ...form.fields, email, password });
}

/**
 * Signs in through the real login and consent pages and returns the response that redirects back
 * to the relying party (its Location carries code, state and iss).
 */
export async function signIn(
  browser: Browser, server: TestServer, url: URL, email: string, password: string, decision: 'allow' | 'deny' = 'allow',
): Promise<Response> {
  const loginPage = await openLoginPage(browser, server, url);
  if (loginPage.status !== 200) throw new Error(`login page answered ${loginPage.status}`);
  const afterLogin = await browser.follow(await submitLogin(browser, server, loginPage, email, password), server.issuer);
  if (afterLogin.status !== 200) return afterLogin; // already redirected to the RP (consent remembered)
  const consent = readForm(await afterLogin.text(), afterLogin.url);
  return browser.follow(await browser.post(consent.action, { ...consent.fields, decision }), server.issuer);
}

export function callbackUrl(response: Response): URL {
  const location = response.headers.get('location');
  if (!location) throw new Error(`expected a redirect to the client, got ${response.status}`);
  return new URL(location);
}

export async function exchangeCode(rp: RelyingParty, request: AuthRequest, callback: URL) {
  return oidc.authorizationCodeGrant(rp.config, callback, {
    pkceCodeVerifier: request.verifier,
    expectedState: request.state,
    expectedNonce: request.nonce,
    idTokenExpected: true,
  });
}
