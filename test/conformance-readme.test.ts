/**
 * The README's relying-party example runs as written: the marked block is loaded as an ES module
 * with only its ISSUER/CLIENT_ID/CLIENT_SECRET/REDIRECT_URI values replaced, and a user signs in
 * through the hosted pages between its two halves.
 */
import fs from 'node:fs';
import path from 'node:path';
import type * as oidc from 'openid-client';
import { loadConfig } from '../src/config.ts';
import { Browser } from './support/browser.ts';
import { callbackUrl, REDIRECT_URI, signIn } from './support/flows.ts';
import { constantValue, importModule, readmeExample, withConstants } from './support/readme-example.ts';
import { startTestServer, type TestServer } from './support/server.ts';

interface Session { verifier: string; state: string; nonce: string }
interface Example {
  startSignIn(): Promise<{ url: URL; session: Session }>;
  finishSignIn(currentUrl: URL, session: Session): Promise<{ tokens: oidc.TokenEndpointResponse & oidc.TokenEndpointResponseHelpers; user: oidc.UserInfoResponse }>;
}

const ROOT = path.resolve(import.meta.dirname, '..');
const email = 'grace@example.com';
const password = 'Tundra-Marble-Quiver-58-Lantern';
const snippet = readmeExample('relying-party');

let server: TestServer;
let accountId: string;
let clientId: string;
let example: Example;

beforeAll(async () => {
  server = await startTestServer();
  const client = await server.services.clients.create({ name: 'README app', redirectUris: [REDIRECT_URI] });
  clientId = client.client_id;
  accountId = (await server.services.accounts.create({ email, password, name: 'Grace Hopper', emailVerified: true })).id;
  example = await importModule<Example>(withConstants(snippet, {
    ISSUER: server.issuer, CLIENT_ID: client.client_id, CLIENT_SECRET: client.client_secret!, REDIRECT_URI,
  }));
});

afterAll(async () => {
  await server?.close();
});

test('the example is written for npm run dev and the client its start-up message suggests', () => {
  expect(constantValue(snippet, 'ISSUER')).toBe(loadConfig({}).issuer);
  const devRedirect = constantValue(snippet, 'REDIRECT_URI');
  expect(fs.readFileSync(path.join(ROOT, 'src/dev.ts'), 'utf8')).toContain(`--redirect-uri ${devRedirect}`);
  expect(snippet).toMatch(/allowInsecureRequests.*local development only/);
});

test('a user signs in between the example\'s two halves and it gets their tokens and claims', async () => {
  const { url, session } = await example.startSignIn();
  expect(url.origin).toBe(server.issuer);
  expect(url.searchParams.get('code_challenge_method')).toBe('S256');

  const callback = callbackUrl(await signIn(new Browser(), server, url, email, password));
  expect(callback.searchParams.get('iss')).toBe(server.issuer);

  // A callback for another sign-in is refused before the code is spent.
  await expect(example.finishSignIn(callback, { ...session, state: 'someone-elses-state' }))
    .rejects.toMatchObject({ cause: { message: expect.stringMatching(/"state"/) } });

  const { tokens, user } = await example.finishSignIn(callback, session);
  expect(tokens.claims()).toMatchObject({ iss: server.issuer, aud: clientId, sub: accountId, nonce: session.nonce });
  expect(user).toMatchObject({ sub: accountId, email, email_verified: true, name: 'Grace Hopper' });

  // The code is single use: the same callback a second time fails.
  await expect(example.finishSignIn(callback, session)).rejects.toThrow();
});
