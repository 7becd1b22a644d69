/** `npm run -s client -- <command>`: manage OAuth clients. Prints JSON on stdout. */
import { parse, print, runCli, UsageError } from './cli.ts';
import type { ClientInput } from '../src/oidc/clients.ts';

const USAGE = `usage: npm run -s client -- <command>
  create --name NAME --redirect-uri URI [--redirect-uri URI2] [--post-logout-redirect-uri URI]
         [--public] [--grant-type T ...] [--scope "openid profile email offline_access"]
         [--application-type web|native] [--id-token-signing-alg ES256|EdDSA|RS256]
         [--require-mfa | --no-require-mfa]
  list
  show ID
  update ID [--name NAME] [--redirect-uri URI ...] [--post-logout-redirect-uri URI ...]
            [--grant-type T ...] [--scope S] [--application-type web|native] [--id-token-signing-alg A]
            [--require-mfa | --no-require-mfa]
  rotate-secret ID
  delete ID
grant types: authorization_code, refresh_token, client_credentials (default: the first two)
--require-mfa: users of this client must sign in with two-step verification`;

const metadataOptions = {
  name: { type: 'string' },
  'redirect-uri': { type: 'string', multiple: true },
  'post-logout-redirect-uri': { type: 'string', multiple: true },
  'grant-type': { type: 'string', multiple: true },
  scope: { type: 'string' },
  'application-type': { type: 'string' },
  'id-token-signing-alg': { type: 'string' },
  'require-mfa': { type: 'boolean' },
  'no-require-mfa': { type: 'boolean' },
} as const;

function toInput(values: Record<string, string | boolean | (string | boolean)[] | undefined>): ClientInput {
  if (values['require-mfa'] && values['no-require-mfa']) throw new UsageError('use either --require-mfa or --no-require-mfa');
  const applicationType = values['application-type'];
  if (applicationType !== undefined && applicationType !== 'web' && applicationType !== 'native') {
    throw new UsageError('--application-type must be web or native');
  }
  return {
    name: values.name as string | undefined,
    redirectUris: values['redirect-uri'] as string[] | undefined,
    postLogoutRedirectUris: values['post-logout-redirect-uri'] as string[] | undefined,
    grantTypes: values['grant-type'] as string[] | undefined,
    scope: values.scope as string | undefined,
    applicationType,
    idTokenSigningAlg: values['id-token-signing-alg'] as string | undefined,
    isPublic: values.public as boolean | undefined,
    requireMfa: values['require-mfa'] ? true : values['no-require-mfa'] ? false : undefined,
  };
}

function oneId(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('expected exactly one client ID');
  return positionals[0]!;
}

await runCli(USAGE, async ([command, ...rest], open) => {
  switch (command) {
    case 'create': {
      const { values, positionals } = parse(rest, { ...metadataOptions, public: { type: 'boolean' } });
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      if (!values.name) throw new UsageError('--name is required');
      const services = await open();
      print(await services.clients.create(toInput(values)));
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
      print(await (await open()).clients.update(oneId(positionals), toInput(values)));
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
