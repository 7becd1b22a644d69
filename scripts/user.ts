/** `npm run -s user -- <command>`: manage user accounts. Prints JSON on stdout. */
import { PROFILE_FIELDS, type ProfileChanges } from '../src/accounts/profile.ts';
import type { AccountView } from '../src/accounts/service.ts';
import type { Services } from '../src/services.ts';
import { parse, print, runCli, UsageError } from './cli.ts';

const USAGE = `usage: npm run -s user -- <command>
  create --email E (--password P | --password-stdin) [--name N] [--verified] [--role R ...] [--allow-weak-password]
  list
  update ID|EMAIL [--name N] [--given-name N] [--family-name N] [--preferred-username U] [--nickname N]
                  [--picture URL] [--website URL] [--locale TAG] [--zoneinfo ZONE]     (--x "" clears)
  disable ID|EMAIL
  enable ID|EMAIL
  set-password ID|EMAIL (--password P | --password-stdin) [--allow-weak-password]
  set-roles ID|EMAIL [--role R ...]      (no --role removes every role)
--password-stdin reads the password from standard input, keeping it out of the process list,
shell history and npm's logs. --allow-weak-password skips the strength rule (8 to 128 characters
still apply) and is recorded in the audit trail.`;

const passwordOptions = {
  password: { type: 'string' }, 'password-stdin': { type: 'boolean' }, 'allow-weak-password': { type: 'boolean' },
} as const;

/** --given-name for given_name, and so on. */
const profileOption = (field: string) => field.replaceAll('_', '-');
const profileOptions = Object.fromEntries(PROFILE_FIELDS.map((field) => [profileOption(field), { type: 'string' as const }]));

/**
 * An administrator chose to bypass the password rule: that stays on record (no actor: the CLI runs
 * with database access, not as an account; `ip` says where it came from).
 */
async function auditWeakPassword(services: Services, account: AccountView, command: 'create' | 'set-password'): Promise<void> {
  await services.audit.record({
    actor: { sub: null, clientId: null }, action: `account.password.weak-allowed.${command}`, target: account.id, outcome: 'success',
    ip: 'cli', requestId: null,
  });
}

/** The password from --password or, with --password-stdin, the first line of standard input. */
async function readPassword(values: { password?: string; 'password-stdin'?: boolean }): Promise<string> {
  if (values.password !== undefined && values['password-stdin']) throw new UsageError('use either --password or --password-stdin');
  if (values.password !== undefined) return values.password;
  if (!values['password-stdin']) throw new UsageError('--password or --password-stdin is required');
  // The first line only, so typing the password at a terminal and pressing Enter is enough.
  let input = '';
  for await (const chunk of process.stdin) {
    input += chunk;
    if (/\r?\n/.test(input)) break;
  }
  process.stdin.destroy();
  const password = input.split(/\r?\n/)[0] ?? '';
  if (!password) throw new UsageError('no password on standard input');
  return password;
}

function oneId(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('expected exactly one account id or email');
  return positionals[0]!;
}

await runCli(USAGE, async ([command, ...rest], open) => {
  switch (command) {
    case 'create': {
      const { values, positionals } = parse(rest, {
        email: { type: 'string' }, ...passwordOptions, name: { type: 'string' },
        verified: { type: 'boolean' }, role: { type: 'string', multiple: true },
      });
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      if (!values.email) throw new UsageError('--email is required');
      const password = await readPassword(values);
      const services = await open();
      const allowWeakPassword = values['allow-weak-password'] ?? false;
      const account = await services.accounts.create({
        email: values.email, password, name: values.name,
        emailVerified: values.verified ?? false, roles: values.role ?? [],
      }, { allowWeakPassword });
      if (allowWeakPassword) await auditWeakPassword(services, account, 'create');
      print(account);
      return;
    }
    case 'update': {
      const { values, positionals } = parse(rest, profileOptions);
      const id = oneId(positionals);
      const changes: ProfileChanges = Object.fromEntries(PROFILE_FIELDS.flatMap((field) => {
        const value = values[profileOption(field)];
        return typeof value === 'string' ? [[field, value]] : [];
      }));
      if (!Object.keys(changes).length) throw new UsageError('nothing to update: give at least one of --name, --given-name, ...');
      print(await (await open()).accounts.updateProfile(id, changes));
      return;
    }
    case 'list':
      parse(rest, {});
      print(await (await open()).accounts.list());
      return;
    case 'disable':
    case 'enable': {
      const id = oneId(parse(rest, {}).positionals);
      print(await (await open()).accounts.setDisabled(id, command === 'disable'));
      return;
    }
    case 'set-password': {
      const { values, positionals } = parse(rest, passwordOptions);
      const id = oneId(positionals);
      const password = await readPassword(values);
      const services = await open();
      const allowWeakPassword = values['allow-weak-password'] ?? false;
      const account = await services.accounts.setPassword(id, password, { allowWeakPassword });
      if (allowWeakPassword) await auditWeakPassword(services, account, 'set-password');
      print(account);
      return;
    }
    case 'set-roles': {
      const { values, positionals } = parse(rest, { role: { type: 'string', multiple: true } });
      print(await (await open()).accounts.setRoles(oneId(positionals), values.role ?? []));
      return;
    }
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  }
});
