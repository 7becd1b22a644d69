/** `npm run -s user -- <command>`: manage user accounts. Prints JSON on stdout. */
import { parse, print, runCli, UsageError } from './cli.ts';

const USAGE = `usage: npm run -s user -- <command>
  create --email E --password P [--name N] [--verified] [--role R ...]
  list
  disable ID|EMAIL
  enable ID|EMAIL
  set-password ID|EMAIL --password P`;

function oneId(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('expected exactly one account id or email');
  return positionals[0]!;
}

await runCli(USAGE, async ([command, ...rest], open) => {
  switch (command) {
    case 'create': {
      const { values, positionals } = parse(rest, {
        email: { type: 'string' }, password: { type: 'string' }, name: { type: 'string' },
        verified: { type: 'boolean' }, role: { type: 'string', multiple: true },
      });
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      if (!values.email || !values.password) throw new UsageError('--email and --password are required');
      const services = await open();
      print(await services.accounts.create({
        email: values.email, password: values.password, name: values.name,
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
      const { values, positionals } = parse(rest, { password: { type: 'string' } });
      if (!values.password) throw new UsageError('--password is required');
      print(await (await open()).accounts.setPassword(oneId(positionals), values.password));
      return;
    }
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  }
});
