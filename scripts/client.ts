/** `npm run -s client -- <command>`: manage OAuth clients. Prints JSON on stdout. */
import { parse, print, runCli, UsageError } from './cli.ts';
import { AUTH_METHODS, type AuthMethod, type ClientInput } from '../src/oidc/clients.ts';

const USAGE = `usage: npm run -s client -- <command>
  create --name NAME --redirect-uri URI [--redirect-uri URI2] [--post-logout-redirect-uri URI]
         [--public | --token-endpoint-auth-method M] [--jwks-uri URL | --jwks JSON]
         [--grant-type T ...] [--scope "openid profile email offline_access"]
         [--application-type web|native] [--id-token-signing-alg ES256|EdDSA|RS256]
         [--pkce required|optional] [--require-mfa | --no-require-mfa] [--first-party | --no-first-party]
         [--id-token-claims full|minimal] [--introspect-for AUDIENCE ... | --no-introspect-for]
  list
  show ID
  update ID [--name NAME] [--redirect-uri URI ...] [--post-logout-redirect-uri URI ...]
            [--public | --token-endpoint-auth-method M] [--jwks-uri URL | --jwks JSON]
            [--grant-type T ...] [--scope S] [--application-type web|native] [--id-token-signing-alg A]
            [--pkce required|optional] [--require-mfa | --no-require-mfa] [--first-party | --no-first-party]
            [--id-token-claims full|minimal] [--introspect-for AUDIENCE ... | --no-introspect-for]
  rotate-secret ID
  delete ID
grant types: authorization_code, refresh_token, client_credentials (default: the first two)
--token-endpoint-auth-method: ${AUTH_METHODS.join(', ')} (default client_secret_basic;
  none is a public client, the same as --public; private_key_jwt needs --jwks-uri or --jwks, a public JWK set)
--pkce optional: a confidential client may leave out PKCE (S256 is required by default, always for public clients)
--require-mfa: users of this client must sign in with two-step verification
--first-party: the provider's own app, never asks for consent
--id-token-claims minimal: profile and email claims only from userinfo, not in the ID token (default full)
--introspect-for: an audience (resource URL) whose tokens this confidential client may introspect
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

function toInput(values: Values): ClientInput {
  const pkce = oneOf(values, 'pkce', ['required', 'optional'] as const);
  const introspectFor = values['introspect-for'] as string[] | undefined;
  if (introspectFor && values['no-introspect-for']) throw new UsageError('use either --introspect-for or --no-introspect-for');
  return {
    name: values.name as string | undefined,
    redirectUris: values['redirect-uri'] as string[] | undefined,
    postLogoutRedirectUris: values['post-logout-redirect-uri'] as string[] | undefined,
    grantTypes: values['grant-type'] as string[] | undefined,
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
  };
}

function oneId(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('expected exactly one client ID');
  return positionals[0]!;
}

await runCli(USAGE, async ([command, ...rest], open) => {
  switch (command) {
    case 'create': {
      const { values, positionals } = parse(rest, metadataOptions);
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      if (!values.name) throw new UsageError('--name is required');
      const input = toInput(values);
      print(await (await open()).clients.create(input));
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
      const { clients } = await open();
      const previous = (await clients.get(id))?.client_secret;
      const { client_secret: secret, ...updated } = await clients.update(id, input);
      // A secret is shown only when it is issued (e.g. leaving private_key_jwt), never again after.
      print(secret && secret !== previous ? { ...updated, client_secret: secret } : updated);
      return;
    }
    case 'rotate-secret': {
      print(await (await open()).clients.rotateSecret(oneId(parse(rest, {}).positionals)));
      return;
    }
    case 'delete': {
      const id = oneId(parse(rest, {}).positionals);
      await (await open()).clients.delete(id);
      print({ client_id: id, deleted: true });
      return;
    }
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  }
});
