/**
 * `npm run -s keys -- <command>`: the signing keys in MongoDB (README "Rotating keys"). Opens only
 * the database: keys are needed before the first production start, when the server would refuse.
 */
import mongoose from 'mongoose';
import { ArtifactStore } from '../adapters/mongodb.ts';
import { resealTotpSecrets } from '../src/accounts/totp-secrets.ts';
import { AuditLog } from '../src/audit/log.ts';
import { SecretBox } from '../src/security/secrets.ts';
import { loadConfig } from '../src/config.ts';
import { ensureDevMongo } from '../src/local/services.ts';
import { createLogger } from '../src/observability/logger.ts';
import { keyRingFor, KeyRingError, publicJwk, SIGNING_ALGS, type SigningAlg } from '../src/oidc/keys.ts';
import { parse, print, recordChange, runCli, UsageError } from './cli.ts';

const USAGE = `usage: npm run -s keys -- <command> [--actor NAME]
  generate             store the first keys (one ES256, EdDSA and RS256 key) unless keys exist
  list                 every key with its state (next, active, retiring, retired) and dates
  show                 the public JWKS being published
  rotate [--alg A ...] add a next key (published, not signing) for each algorithm (default all)
  promote KID [--force]  make a next key sign; refused until it has been published longer than
                         JWKS_CACHE_SECONDS + KEYS_REFRESH_SECONDS
  retire KID [--force]   remove a key from the JWKS and erase it; refused while tokens it signed
                         can still be valid (the longest TTL_* since it stopped signing)
  reseal               seal every stored secret (signing keys, client and TOTP secrets) with the first SECRETS_KEY
algorithms: ${SIGNING_ALGS.join(', ')}. Without --force the waits keep relying parties with cached
key sets working; --force skips them (and is recorded in the audit trail).`;

await runCli(USAGE, async ([command, ...rest], _open, operator) => {
  const { values, positionals } = parse(rest, { alg: { type: 'string', multiple: true }, force: { type: 'boolean' } });
  const takes = { generate: 0, list: 0, show: 0, rotate: 0, promote: 1, retire: 1, reseal: 0 } as const;
  if (!command || !(command in takes)) throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  if (positionals.length !== takes[command as keyof typeof takes]) throw new UsageError(`${command} takes ${takes[command as keyof typeof takes] ? 'one key id' : 'no argument'}`);
  if (values.alg && command !== 'rotate') throw new UsageError('--alg goes with rotate');
  if (values.force && command !== 'promote' && command !== 'retire') throw new UsageError('--force goes with promote or retire');
  const algs = values.alg as SigningAlg[] | undefined;
  const unknown = algs?.find((alg) => !(SIGNING_ALGS as readonly string[]).includes(alg));
  if (unknown) throw new UsageError(`--alg must be one of ${SIGNING_ALGS.join(', ')}, got "${unknown}"`);

  const config = loadConfig(process.env);
  const logger = createLogger('error', 2);
  if (config.jwks && command !== 'show') throw new KeyRingError('OIDC_JWKS supplies the keys: rotate them by changing that variable');
  const uri = config.mongodbUri ?? (await ensureDevMongo(config.dataDir, (m) => logger.info(m)));
  const connection = await mongoose.createConnection(uri, { serverSelectionTimeoutMS: 5000 }).asPromise();
  const audit = { audit: new AuditLog(connection, logger) };
  const ring = keyRingFor(connection, config);
  const kid = positionals[0]!;
  try {
    switch (command) {
      case 'generate': {
        const { created } = await ring.generate();
        if (created) await recordChange(audit, operator, 'keys.generate', null);
        print({ created, keys: await ring.list() });
        break;
      }
      case 'list':
        print(await ring.list());
        break;
      case 'show':
        print(config.jwks ? { keys: config.jwks.keys.map((k) => publicJwk(k)) } : { keys: ((await ring.privateJwks())?.keys ?? []).map(publicJwk) });
        break;
      case 'rotate': {
        const keys = await ring.rotate(algs);
        for (const key of keys) await recordChange(audit, operator, 'keys.rotate', key.kid, { alg: key.alg });
        print(keys);
        break;
      }
      case 'promote':
      case 'retire': {
        const result = command === 'promote' ? await ring.promote(kid, { force: values.force }) : await ring.retire(kid, { force: values.force });
        await recordChange(audit, operator, `keys.${command}`, kid, { forced: values.force ?? false });
        print(result);
        break;
      }
      case 'reseal': {
        const keys = await ring.reseal();
        const secrets = new SecretBox(config.secretsKeys);
        const clients = await new ArtifactStore(connection, { secrets }).resealClientSecrets();
        const totp = await resealTotpSecrets(connection, secrets);
        await recordChange(audit, operator, 'keys.reseal', null, { keys, clients, totp });
        print({ resealed: { signingKeys: keys, clientSecrets: clients, totpSecrets: totp } });
        break;
      }
    }
  } finally {
    await connection.close();
  }
});
