/** `npm run -s client -- <command>`: manage OAuth clients. Prints JSON on stdout. */
import { readFile } from 'node:fs/promises';
import { text as streamText } from 'node:stream/consumers';
import { parse, print, recordChange, runCli, UsageError, type Operator } from './cli.ts';
import { AppError } from '../src/http/errors.ts';
import { exportClients, importClients } from '../src/oidc/client-transfer.ts';
import type { Services } from '../src/services.ts';
import { AUTH_METHODS, DEVICE_CODE_GRANT, type AuthMethod, type ClientInput } from '../src/oidc/clients.ts';

const USAGE = `usage: npm run -s client -- <command>
  create --name NAME --redirect-uri URI [--redirect-uri URI2] [--post-logout-redirect-uri URI]
         [--public | --token-endpoint-auth-method M] [--jwks-uri URL | --jwks JSON]
         [--grant-type T ...] [--scope "openid profile email offline_access"]
         [--application-type web|native] [--id-token-signing-alg ES256|EdDSA|RS256]
         [--pkce required|optional] [--require-mfa | --no-require-mfa] [--first-party | --no-first-party]
         [--id-token-claims full|minimal] [--introspect-for AUDIENCE ... | --no-introspect-for]
         [--backchannel-logout-uri URL [--backchannel-logout-session-required]]
         [--require-dpop | --no-require-dpop]
  list
  show ID
  update ID [--name NAME] [--redirect-uri URI ...] [--post-logout-redirect-uri URI ...]
            [--public | --token-endpoint-auth-method M] [--jwks-uri URL | --jwks JSON]
            [--grant-type T ...] [--scope S] [--application-type web|native] [--id-token-signing-alg A]
            [--pkce required|optional] [--require-mfa | --no-require-mfa] [--first-party | --no-first-party]
            [--id-token-claims full|minimal] [--introspect-for AUDIENCE ... | --no-introspect-for]
            [--backchannel-logout-uri URL | --no-backchannel-logout-uri]
            [--backchannel-logout-session-required | --no-backchannel-logout-session-required]
            [--require-dpop | --no-require-dpop]
  rotate-secret ID
  delete ID
  export [ID ...]                 the clients (all but account-console) as JSON, without secrets
  import FILE|- [--prune]         create missing and update changed clients from an export (- reads stdin)
  registration-token create [--expires-in SECONDS] [--uses N]
  registration-token list
  registration-token revoke ID
grant types: authorization_code, refresh_token, client_credentials, device_code (default: the first two;
  device_code, or its URN ${DEVICE_CODE_GRANT}, is the device flow of RFC 8628 on /device;
  a device-only client needs no --redirect-uri)
--token-endpoint-auth-method: ${AUTH_METHODS.join(', ')} (default client_secret_basic;
  none is a public client, the same as --public; private_key_jwt needs --jwks-uri or --jwks, a public JWK set)
--pkce optional: a confidential client may leave out PKCE (S256 is required by default, always for public clients)
--require-mfa: users of this client must sign in with two-step verification
--first-party: the provider's own app, never asks for consent
--id-token-claims minimal: profile and email claims only from userinfo, not in the ID token (default full)
--introspect-for: an audience (resource URL) whose tokens this confidential client may introspect
--backchannel-logout-uri: where the app is POSTed a logout token when its user signs out (https; http only on
  localhost, 127.0.0.1 or [::1] outside production); --backchannel-logout-session-required adds the session's sid
--require-dpop: the token endpoint refuses this client's requests without a DPoP proof (RFC 9449)
import: each client is created, updated or left unchanged (said per client); a new secret is printed once;
  --prune also deletes the clients the file does not name
registration-token: an initial access token for dynamic client registration (CLIENT_REGISTRATION_ENABLED),
  printed once; one use (--uses N for N registrations), for a day unless --expires-in
update prints the client without its secret (unless it issued a new one); create and rotate-secret print it once
the built-in client account-console cannot be updated, rotated or deleted`;

const metadataOptions = {
  name: { type: 'string' },
  'redirect-uri': { type: 'string', multiple: true },
  'post-logout-redirect-uri': { type: 'string', multiple: true },
  'grant-type': { type: 'string', multiple: true },
  scope: { type: 'string' },
  'application-type': { type: 'string' },
  'id-token-signing-alg': { type: 'string' },
  public: { type: 'boolean' },
  'token-endpoint-auth-method': { type: 'string' },
  'jwks-uri': { type: 'string' },
  jwks: { type: 'string' },
  pkce: { type: 'string' },
  'require-mfa': { type: 'boolean' },
  'no-require-mfa': { type: 'boolean' },
  'first-party': { type: 'boolean' },
  'no-first-party': { type: 'boolean' },
  'id-token-claims': { type: 'string' },
  'introspect-for': { type: 'string', multiple: true },
  'no-introspect-for': { type: 'boolean' },
  'backchannel-logout-uri': { type: 'string' },
  'no-backchannel-logout-uri': { type: 'boolean' },
  'backchannel-logout-session-required': { type: 'boolean' },
  'no-backchannel-logout-session-required': { type: 'boolean' },
  'require-dpop': { type: 'boolean' },
  'no-require-dpop': { type: 'boolean' },
} as const;

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** `--flag` / `--no-flag` → true / false; neither keeps what is registered. */
function toggle(values: Values, flag: string): boolean | undefined {
  if (values[flag] && values[`no-${flag}`]) throw new UsageError(`use either --${flag} or --no-${flag}`);
  return values[flag] ? true : values[`no-${flag}`] ? false : undefined;
}

function oneOf<T extends string>(values: Values, flag: string, allowed: readonly T[]): T | undefined {
  const value = values[flag] as string | undefined;
  if (value !== undefined && !(allowed as readonly string[]).includes(value)) throw new UsageError(`--${flag} must be ${allowed.join(' or ')}`);
  return value as T | undefined;
}

function jwksFrom(text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError('--jwks must be JSON, a JWK set: {"keys":[...]}');
  }
}

/** The device flow's grant type may be given by its short name; the URN is what is stored. */
const grantTypesFrom = (given: string[] | undefined) => given?.map((type) => (type === 'device_code' ? DEVICE_CODE_GRANT : type));

function logoutUriFrom(values: Values): string | null | undefined {
  const uri = values['backchannel-logout-uri'] as string | undefined;
  if (uri !== undefined && values['no-backchannel-logout-uri']) throw new UsageError('use either --backchannel-logout-uri or --no-backchannel-logout-uri');
  return values['no-backchannel-logout-uri'] ? null : uri;
}

function toInput(values: Values): ClientInput {
  const pkce = oneOf(values, 'pkce', ['required', 'optional'] as const);
  const introspectFor = values['introspect-for'] as string[] | undefined;
  if (introspectFor && values['no-introspect-for']) throw new UsageError('use either --introspect-for or --no-introspect-for');
  return {
    name: values.name as string | undefined,
    redirectUris: values['redirect-uri'] as string[] | undefined,
    postLogoutRedirectUris: values['post-logout-redirect-uri'] as string[] | undefined,
    grantTypes: grantTypesFrom(values['grant-type'] as string[] | undefined),
    scope: values.scope as string | undefined,
    applicationType: oneOf(values, 'application-type', ['web', 'native'] as const),
    idTokenSigningAlg: values['id-token-signing-alg'] as string | undefined,
    isPublic: values.public as boolean | undefined,
    tokenEndpointAuthMethod: oneOf<AuthMethod>(values, 'token-endpoint-auth-method', AUTH_METHODS),
    jwksUri: values['jwks-uri'] as string | undefined,
    jwks: jwksFrom(values.jwks as string | undefined),
    pkceRequired: pkce === undefined ? undefined : pkce === 'required',
    requireMfa: toggle(values, 'require-mfa'),
    firstParty: toggle(values, 'first-party'),
    idTokenClaims: oneOf(values, 'id-token-claims', ['full', 'minimal'] as const),
    introspectFor: values['no-introspect-for'] ? [] : introspectFor,
    backchannelLogoutUri: logoutUriFrom(values),
    backchannelLogoutSessionRequired: toggle(values, 'backchannel-logout-session-required'),
    requireDpop: toggle(values, 'require-dpop'),
  };
}

function oneId(positionals: string[], what = 'client ID'): string {
  if (positionals.length !== 1) throw new UsageError(`expected exactly one ${what}`);
  return positionals[0]!;
}

/** The document `client import` reads: a file, or stdin for "-". */
async function readDocument(file: string): Promise<unknown> {
  const text = file === '-' ? await streamText(process.stdin) : await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new AppError('invalid_request', `cannot read ${file}: ${error.code ?? error.message}`);
  });
  try {
    return JSON.parse(text);
  } catch {
    throw new AppError('invalid_request', `${file === '-' ? 'stdin' : file} is not JSON`);
  }
}

async function registrationToken([command, ...rest]: string[], services: Services, operator: Operator): Promise<void> {
  const { registration, provider } = services;
  switch (command) {
    case 'create': {
      const { values, positionals } = parse(rest, { 'expires-in': { type: 'string' }, uses: { type: 'string' } });
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      const count = (flag: string) => {
        const value = values[flag as 'uses'];
        if (value !== undefined && !/^\d{1,9}$/.test(value)) throw new UsageError(`--${flag} expects a whole number`);
        return value === undefined ? undefined : Number(value);
      };
      const { token, info } = await registration.create(provider, { expiresIn: count('expires-in'), uses: count('uses'), createdBy: operator });
      await recordChange(services, operator, 'client.registration-token.create', info.id, { uses: info.uses, expires_at: info.expires_at });
      // The token is shown here only; the database keeps no way to show it again.
      print({ ...info, token });
      return;
    }
    case 'list':
      parse(rest, {});
      print(await registration.list());
      return;
    case 'revoke': {
      const id = oneId(parse(rest, {}).positionals, 'registration token ID');
      if (!(await registration.revoke(id))) throw new AppError('not_found', `no registration token with id "${id}"`, 404);
      await recordChange(services, operator, 'client.registration-token.revoke', id);
      print({ id, revoked: true });
      return;
    }
    default:
      throw new UsageError(command ? `unknown registration-token command "${command}"` : 'registration-token needs create, list or revoke');
  }
}

await runCli(USAGE, async ([command, ...rest], open, operator) => {
  switch (command) {
    case 'create': {
      const { values, positionals } = parse(rest, metadataOptions);
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      if (!values.name) throw new UsageError('--name is required');
      const input = toInput(values);
      const services = await open();
      const created = await services.clients.create(input);
      await recordChange(services, operator, 'client.create', created.client_id);
      print(created);
      return;
    }
    case 'list': {
      parse(rest, {});
      print(await (await open()).clients.list());
      return;
    }
    case 'show': {
      const id = oneId(parse(rest, {}).positionals);
      const { client_secret: _secret, ...shown } = await (await open()).clients.require(id);
      print(shown);
      return;
    }
    case 'update': {
      const { values, positionals } = parse(rest, metadataOptions);
      const id = oneId(positionals);
      const input = toInput(values);
      const services = await open();
      const { clients } = services;
      const previous = (await clients.get(id))?.client_secret;
      const { client_secret: secret, ...updated } = await clients.update(id, input);
      await recordChange(services, operator, 'client.update', id);
      // A secret is shown only when it is issued (e.g. leaving private_key_jwt), never again after.
      print(secret && secret !== previous ? { ...updated, client_secret: secret } : updated);
      return;
    }
    case 'rotate-secret': {
      const id = oneId(parse(rest, {}).positionals);
      const services = await open();
      const rotated = await services.clients.rotateSecret(id);
      await recordChange(services, operator, 'client.rotate-secret', id);
      print(rotated);
      return;
    }
    case 'delete': {
      const id = oneId(parse(rest, {}).positionals);
      const services = await open();
      await services.clients.delete(id);
      await recordChange(services, operator, 'client.delete', id);
      print({ client_id: id, deleted: true });
      return;
    }
    case 'export': {
      const ids = parse(rest, {}).positionals;
      print(await exportClients((await open()).clients, ids));
      return;
    }
    case 'import': {
      const { values, positionals } = parse(rest, { prune: { type: 'boolean' } });
      if (positionals.length !== 1) throw new UsageError('import expects one FILE (or - for stdin)');
      const document = await readDocument(positionals[0]!);
      const services = await open();
      const results = await importClients(services.clients, document, { prune: values.prune === true });
      for (const { client_id: id, outcome } of results) {
        const action = { created: 'client.create', updated: 'client.update', deleted: 'client.delete', unchanged: undefined }[outcome];
        if (action) await recordChange(services, operator, action, id, { source: 'import' });
      }
      const summary = Object.fromEntries((['created', 'updated', 'unchanged', 'deleted'] as const)
        .map((outcome) => [outcome, results.filter((r) => r.outcome === outcome).length]));
      print({ clients: results, summary });
      return;
    }
    case 'registration-token':
      await registrationToken(rest, await open(), operator);
      return;
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  }
});
