/**
 * Bare oidc-provider, the bench's yardstick: the same oidc-provider version as the provider, its
 * built-in memory adapter (no adapter configured), one confidential client allowed
 * client_credentials, and introspection on. No Koa app, database, Redis, rate limits or logging
 * around it: what the library costs on its own.
 * Environment: BARE_PORT (listens on 127.0.0.1), BARE_CLIENT_ID, BARE_CLIENT_SECRET.
 */
import http from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';
import { Provider } from 'oidc-provider';

const port = Number(process.env.BARE_PORT);
const clientId = process.env.BARE_CLIENT_ID;
const clientSecret = process.env.BARE_CLIENT_SECRET;
if (!Number.isInteger(port) || port <= 0 || !clientId || !clientSecret) throw new Error('set BARE_PORT, BARE_CLIENT_ID and BARE_CLIENT_SECRET');

// A signing key of its own, so that the library does not fall back to its development keys (and warn).
const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId, client_secret: clientSecret, grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: 'openid', id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [{ ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'bare' }] },
  cookies: { keys: ['bare-provider-cookie-key-0123456789'] },
  // The provider's own default lifetime and introspection rule (a token is described to its client).
  ttl: { ClientCredentials: 600 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async (_ctx, client, token) => (token as { clientId?: string }).clientId === client.clientId },
  },
});

const server = http.createServer(provider.callback());
await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
process.stderr.write(`[bare oidc-provider] listening on http://127.0.0.1:${port}\n`);
process.once('SIGTERM', () => server.close(() => process.exit(0)));
