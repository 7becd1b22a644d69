/**
 * Signing keys. One private JWKS shared by every instance and stable across restarts: supplied by
 * the operator (OIDC_JWKS) or stored in MongoDB (`signing_keys`). Development generates and stores
 * it on first start; production refuses to, so keys are always a deliberate operator action
 * (`npm run -s keys -- generate`).
 *
 * ES256 comes first and therefore signs by default; EdDSA and RS256 stay available for clients
 * that register id_token_signed_response_alg accordingly.
 */
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import type { Connection } from 'mongoose';
import type { JWK } from 'oidc-provider';

export interface PrivateJwks { keys: JWK[] }

interface StoredJwks { _id: string; keys: JWK[]; createdAt: Date }

const JWKS_ID = 'current';

function toJwk(key: KeyObject, alg: string): JWK {
  return { ...(key.export({ format: 'jwk' }) as JWK), alg, use: 'sig', kid: randomBytes(12).toString('base64url') };
}

export function generateJwks(): PrivateJwks {
  return {
    keys: [
      toJwk(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, 'ES256'),
      toJwk(generateKeyPairSync('ed25519').privateKey, 'EdDSA'),
      toJwk(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, 'RS256'),
    ],
  };
}

export function publicJwks(jwks: PrivateJwks): PrivateJwks {
  const privateMembers = new Set(['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']);
  return { keys: jwks.keys.map((k) => Object.fromEntries(Object.entries(k).filter(([m]) => !privateMembers.has(m))) as JWK) };
}

function collection(connection: Connection) {
  return connection.collection<StoredJwks>('signing_keys');
}

/** Stores a new JWKS unless one exists; returns the one in force (first writer wins). */
export async function storeNewJwks(connection: Connection): Promise<{ jwks: PrivateJwks; created: boolean }> {
  const generated = generateJwks();
  try {
    await collection(connection).insertOne({ _id: JWKS_ID, keys: generated.keys, createdAt: new Date() });
    return { jwks: generated, created: true };
  } catch (error) {
    if ((error as { code?: unknown }).code !== 11000) throw error;
    const stored = await collection(connection).findOne({ _id: JWKS_ID });
    return { jwks: { keys: stored!.keys }, created: false };
  }
}

export async function loadSigningKeys(
  connection: Connection,
  options: { supplied: PrivateJwks | undefined; mayGenerate: boolean },
): Promise<PrivateJwks> {
  if (options.supplied) return options.supplied;
  const stored = await collection(connection).findOne({ _id: JWKS_ID });
  if (stored) return { keys: stored.keys };
  if (!options.mayGenerate) {
    throw new Error('No signing keys: set OIDC_JWKS, or run `npm run -s keys -- generate` once against this database');
  }
  return (await storeNewJwks(connection)).jwks;
}
