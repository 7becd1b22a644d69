/**
 * `npm run -s keys -- generate|show`: create the signing keys in MongoDB once (required before the
 * first production start unless OIDC_JWKS is set), or print the public JWKS in force.
 */
import { runCli, print, UsageError } from './cli.ts';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/observability/logger.ts';
import { loadSigningKeys, publicJwks, storeNewJwks } from '../src/oidc/keys.ts';
import mongoose from 'mongoose';
import { ensureDevMongo } from '../src/local/services.ts';

const USAGE = `usage: npm run -s keys -- <command>
  generate   store a new signing JWKS (ES256, EdDSA, RS256) unless one exists
  show       print the public JWKS in force`;

await runCli(USAGE, async ([command, ...rest]) => {
  if (rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
  if (command !== 'generate' && command !== 'show') throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  // Keys only need the database, not the whole provider (which would itself refuse to start
  // without keys in production).
  const config = loadConfig(process.env);
  const uri = config.mongodbUri ?? (await ensureDevMongo(config.dataDir, (m) => createLogger('info', 2).info(m)));
  const connection = await mongoose.createConnection(uri).asPromise();
  try {
    if (command === 'generate') {
      const { jwks, created } = await storeNewJwks(connection);
      print({ created, keys: publicJwks(jwks).keys });
    } else {
      print(publicJwks(await loadSigningKeys(connection, { supplied: config.jwks, mayGenerate: false })));
    }
  } finally {
    await connection.close();
  }
});
