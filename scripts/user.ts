/** `npm run -s user -- <command>`: manage user accounts. Prints JSON on stdout. */
import { parse, print, runCli, UsageError } from './cli.ts';

const USAGE = `usage: npm run -s user -- <command>
  create --email E (--password P | --password-stdin) [--name N] [--verified] [--role R ...]
  list
  disable ID|EMAIL
  enable ID|EMAIL
  set-password ID|EMAIL (--password P | --password-stdin)
  set-roles ID|EMAIL [--role R ...]      (no --role removes every role)
--password-stdin reads the password from standard input, keeping it out of the process list,
shell history and npm's logs.`;

const passwordOptions = { password: { type: 'string' }, 'password-stdin': { type: 'boolean' } } as const;

/** The password from --password or, with --password-stdin, the first line of standard input. */
async function readPassword(values: { password?: string; 'password-stdin'?: boolean }): Promise<string> {
  if (values.password !== undefined && values['password-stdin']) throw new UsageError('use either --password or --password-stdin');
  if (values.password !== undefined) return values.password;
  if (!values['password-stdin']) throw new UsageError('--password or --password-stdin is required');
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
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
      print(await services.accounts.create({
        email: values.email, password, name: values.name,
        emailVerified: values.verified ?? false, roles: values.role ?? [],
      }));
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
      print(await (await open()).accounts.setPassword(id, await readPassword(values)));
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
