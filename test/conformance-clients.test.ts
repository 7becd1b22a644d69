/**
 * Client registration options as a relying party meets them, through real HTTP with
 * openid-client: optional PKCE for a confidential client, client_secret_post, and private_key_jwt
 * with keys registered inline (jwks) or published at a jwks_uri.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair } from 'jose';
import * as oidc from 'openid-client';
import { Browser } from './support/browser.ts';
import {
  authorizationRequest, callbackUrl, exchangeCode, registerRelyingParty, signIn, type AuthRequest, type RelyingParty,
} from './support/flows.ts';
import { startTestServer, type TestServer } from './support/server.ts';

let server: TestServer;
let accountId: string;
const email = 'katherine@example.com';
const password = 'orbital mechanics by hand';

beforeAll(async () => {
  server = await startTestServer();
  accountId = (await server.services.accounts.create({ email, password, name: 'Katherine Johnson', emailVerified: true })).id;
});

afterAll(async () => {
  await server?.close();
});

/** Signs in through the hosted pages and returns the redirect back to the client. */
async function signedInCallback(request: AuthRequest | URL): Promise<URL> {
  const url = request instanceof URL ? request : request.url;
  return callbackUrl(await signIn(new Browser(), server, url, email, password));
}

function withoutPkce(url: URL): URL {
  const stripped = new URL(url);
  stripped.searchParams.delete('code_challenge');
  stripped.searchParams.delete('code_challenge_method');
  return stripped;
}

/** The same registered client, authenticating another way. */
function configWith(rp: RelyingParty, auth: oidc.ClientAuth): oidc.Configuration {
  const config = new oidc.Configuration(rp.config.serverMetadata(), rp.client.client_id, undefined, auth);
  oidc.allowInsecureRequests(config);
  return config;
}

async function expectInvalidClient(promise: Promise<unknown>): Promise<void> {
  await expect(promise).rejects.toMatchObject({ error: 'invalid_client' });
}

describe('PKCE', () => {
  test('a confidential client registered with pkce_required false completes a code flow without code_challenge', async () => {
    const rp = await registerRelyingParty(server, { name: 'Legacy server app', pkceRequired: false });
    const request = await authorizationRequest(rp);
    const callback = await signedInCallback(withoutPkce(request.url));
    expect(callback.searchParams.get('error')).toBeNull();

    const tokens = await oidc.authorizationCodeGrant(rp.config, callback, {
      expectedState: request.state, expectedNonce: request.nonce, idTokenExpected: true,
    });
    expect(tokens.claims()!.sub).toBe(accountId);
  });

  test('a client registered with the defaults is refused without code_challenge', async () => {
    const rp = await registerRelyingParty(server, { name: 'Default app' });
    const request = await authorizationRequest(rp);
    const callback = callbackUrl(await new Browser().get(withoutPkce(request.url)));
    expect(callback.searchParams.get('error')).toBe('invalid_request');
    expect(callback.searchParams.get('error_description')).toMatch(/PKCE/);
    expect(callback.searchParams.get('code')).toBeNull();
  });
});

describe('client_secret_post', () => {
  test('exchanges its code with the secret in the body; a wrong secret is refused', async () => {
    const rp = await registerRelyingParty(server, { name: 'Post app', tokenEndpointAuthMethod: 'client_secret_post' },
      (client) => oidc.ClientSecretPost(client.client_secret));
    const request = await authorizationRequest(rp);
    const callback = await signedInCallback(request);

    // A refused client authentication does not spend the code: the same code then works.
    // (oidc-provider accepts the secret by either secret method, as RFC 6749 2.3.1 allows.)
    await expectInvalidClient(exchangeCode({ ...rp, config: configWith(rp, oidc.ClientSecretPost(`${rp.client.client_secret}x`)) }, request, callback));
    const tokens = await exchangeCode(rp, request, callback);
    expect(tokens.claims()!.sub).toBe(accountId);
    expect(tokens.access_token).toEqual(expect.any(String));
  });
});

describe('private_key_jwt', () => {
  let jwksServer: Server;
  let jwksRequests = 0;
  let published: Record<string, unknown>;

  beforeAll(async () => {
    const { publicKey } = await generateKeyPair('ES256');
    published = { ...(await exportJWK(publicKey)), use: 'sig', alg: 'ES256' };
    jwksServer = createServer((req, res) => {
      jwksRequests += 1;
      if (req.url !== '/jwks') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(JSON.stringify({ keys: [published] }));
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  });

  afterAll(async () => {
    await new Promise((resolve) => jwksServer?.close(resolve));
  });

  test('a client registered with its public key (jwks) signs its token request; another key is refused', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const stranger = await generateKeyPair('ES256');
    const rp = await registerRelyingParty(server, {
      name: 'Signed app', tokenEndpointAuthMethod: 'private_key_jwt', jwks: { keys: [await exportJWK(publicKey)] },
    }, () => oidc.PrivateKeyJwt(privateKey));
    expect(rp.client).not.toHaveProperty('client_secret');

    const request = await authorizationRequest(rp);
    const callback = await signedInCallback(request);
    await expectInvalidClient(exchangeCode({ ...rp, config: configWith(rp, oidc.PrivateKeyJwt(stranger.privateKey)) }, request, callback));
    const tokens = await exchangeCode(rp, request, callback);
    expect(tokens.claims()!.sub).toBe(accountId);
  });

  test('a client registered with a jwks_uri has its key fetched from there', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    published = { ...(await exportJWK(publicKey)), use: 'sig', alg: 'ES256' };
    const { port } = jwksServer.address() as AddressInfo;
    const rp = await registerRelyingParty(server, {
      name: 'Published keys app', tokenEndpointAuthMethod: 'private_key_jwt', jwksUri: `http://127.0.0.1:${port}/jwks`,
    }, () => oidc.PrivateKeyJwt(privateKey));
    expect(rp.client).not.toHaveProperty('client_secret');

    const request = await authorizationRequest(rp);
    const callback = await signedInCallback(request);
    const before = jwksRequests;
    const tokens = await exchangeCode(rp, request, callback);
    expect(tokens.claims()!.sub).toBe(accountId);
    expect(jwksRequests).toBeGreaterThan(before);
  });
});
