/** `npm run -s user -- <command>`: manage user accounts. Prints JSON on stdout. */
import { constants, createReadStream } from 'node:fs';
import { access } from 'node:fs/promises';
import { once } from 'node:events';
import path from 'node:path';
import type { AdapterPayload } from 'oidc-provider';
import { eraseAccount } from '../src/accounts/erase.ts';
import { checkProfile, PROFILE_FIELDS, type ProfileChanges } from '../src/accounts/profile.ts';
import { normalizeEmail, ProfileError, type AccountView } from '../src/accounts/service.ts';
import { AccountTransfer, type ImportSummary } from '../src/accounts/transfer.ts';
import { AppError } from '../src/http/errors.ts';
import type { Services } from '../src/services.ts';
import { parse, print, recordChange, runCli, UsageError, type Operator } from './cli.ts';

const USAGE = `usage: npm run -s user -- <command> [--actor NAME]
  create --email E (--password P | --password-stdin) [--name N] [--verified] [--role R ...] [--allow-weak-password]
  list
  show ID|EMAIL                          account, password and MFA state, sessions, grants (never a secret)
  update ID|EMAIL [--name N] [--given-name N] [--family-name N] [--preferred-username U] [--nickname N]
                  [--picture URL] [--website URL] [--locale TAG] [--zoneinfo ZONE]     (--x "" clears)
                  [--email NEW]          the new address is unverified until the mailed link is followed
  disable ID|EMAIL
  enable ID|EMAIL
  set-password ID|EMAIL (--password P | --password-stdin) [--allow-weak-password]
  set-roles ID|EMAIL [--role R ...]      (no --role removes every role)
  reset-mfa ID|EMAIL                     two-step verification off: secret, recovery codes, pending sign-ins
  sessions ID|EMAIL
  revoke-session ID|EMAIL SESSION        SESSION is the uid that sessions shows
  delete ID|EMAIL [--keep-documents --transfer-to ID|EMAIL]
                                         erases the account, its sessions, grants, tokens, MFA data and
                                         documents (or hands the documents over); safe to run again
  import FILE                            JSON lines (- for standard input); a report line per line
  export [--with-hashes]                 JSON lines; password hashes and TOTP secrets only with --with-hashes
--password-stdin reads the password from standard input, keeping it out of the process list,
shell history and npm's logs. --allow-weak-password skips the strength rule (8 to 128 characters
still apply) and is recorded in the audit trail. Every change is audited as operator:NAME
(--actor NAME, else the OS user).`;

const passwordOptions = {
  password: { type: 'string' }, 'password-stdin': { type: 'boolean' }, 'allow-weak-password': { type: 'boolean' },
} as const;

/** --given-name for given_name, and so on. */
const profileOption = (field: string) => field.replaceAll('_', '-');
const profileOptions = Object.fromEntries(PROFILE_FIELDS.map((field) => [profileOption(field), { type: 'string' as const }]));

/** An administrator chose to bypass the password rule: that stays on record. */
async function auditWeakPassword(services: Services, operator: Operator, account: AccountView, command: 'create' | 'set-password'): Promise<void> {
  await recordChange(services, operator, `account.password.weak-allowed.${command}`, account.id);
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

function ids(positionals: string[], count = 1): string[] {
  if (positionals.length !== count) throw new UsageError(count === 1 ? 'expected exactly one account id or email' : 'expected an account id or email and a session');
  return positionals;
}
const oneId = (positionals: string[]) => ids(positionals)[0]!;

async function required(services: Services, idOrEmail: string): Promise<AccountView> {
  const account = await services.accounts.get(idOrEmail);
  if (!account) throw new AppError('account_not_found', 'no such account', 404);
  return account;
}

const time = (seconds: unknown) => (typeof seconds === 'number' ? new Date(seconds * 1000).toISOString() : null);

/** A session as an administrator sees it: its uid, never its id (the cookie's value). */
function sessionView(payload: AdapterPayload) {
  return {
    uid: payload.uid ?? null, created: time(payload.iat), expires: time(payload.exp), signed_in: time(payload.loginTs),
    amr: payload.amr ?? [], apps: Object.keys(payload.authorizations ?? {}),
  };
}

async function show(services: Services, idOrEmail: string) {
  const account = await required(services, idOrEmail);
  const [password, mfa, sessions, grants] = await Promise.all([
    services.accounts.passwordState(account.id), services.mfa.status(account.id),
    services.store.sessionsOf(account.id), services.store.grantsOf(account.id),
  ]);
  const clientName = async (id: unknown) => (await services.provider.Client.find(String(id)).catch(() => undefined))?.clientName ?? null;
  return {
    ...account, password, mfa: { enabled: mfa.enabled, recovery_codes_left: mfa.recoveryCodesLeft },
    sessions: sessions.map(({ payload }) => sessionView(payload)),
    grants: await Promise.all(grants.map(async ({ id, payload }) => ({
      id, client_id: payload.clientId, client_name: await clientName(payload.clientId), scope: (payload.openid as { scope?: string } | undefined)?.scope ?? '',
      resources: payload.resources ?? {}, created: time(payload.iat), expires: time(payload.exp),
    }))),
    // Accounts have no linked upstream identities yet (no federation).
  };
}

/** Writes one JSON line, waiting while stdout's buffer is full (exports can be large). */
async function writeLine(value: unknown): Promise<void> {
  if (!process.stdout.write(`${JSON.stringify(value)}\n`)) await once(process.stdout, 'drain');
}

async function importFile(services: Services, operator: Operator, file: string): Promise<void> {
  const input = file === '-' ? process.stdin : createReadStream(file);
  const summary: ImportSummary = { lines: 0, created: 0, updated: 0, unchanged: 0, errors: 0 };
  const transfer = new AccountTransfer(services.connection, services.accounts, services.accountTokens, services.secrets);
  let finished = false;
  try {
    for await (const report of transfer.import(input, summary)) await writeLine(report);
    finished = true;
  } finally {
    // One event per run, with its counts (also for a run a database failure ended).
    await recordChange(services, operator, 'account.import', null, { ...summary, source: file === '-' ? 'stdin' : path.basename(file), finished });
  }
  await writeLine({ summary });
  if (summary.errors) {
    process.stderr.write(`error: ${summary.errors} of ${summary.lines} lines were not imported (see their reports)\n`);
    process.exitCode = 1;
  }
}

await runCli(USAGE, async ([command, ...rest], open, operator) => {
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
      await recordChange(services, operator, 'account.create', account.id, { verified: account.email_verified, roles: account.roles.join(' ') });
      if (allowWeakPassword) await auditWeakPassword(services, operator, account, 'create');
      print(account);
      return;
    }
    case 'update': {
      const { values: parsed, positionals } = parse(rest, { ...profileOptions, email: { type: 'string' } });
      const values = parsed as Record<string, string | undefined>;
      const id = oneId(positionals);
      const changes: ProfileChanges = Object.fromEntries(PROFILE_FIELDS.flatMap((field) => {
        const value = values[profileOption(field)];
        return typeof value === 'string' ? [[field, value]] : [];
      }));
      const newEmail = values.email;
      if (!Object.keys(changes).length && newEmail === undefined) throw new UsageError('nothing to update: give at least one of --name, --given-name, ..., --email');
      // Everything is checked before anything is written, so a refused command changes nothing.
      const { problems } = checkProfile(changes);
      if (problems.length) throw new ProfileError(problems);
      const services = await open();
      let account = await required(services, id);
      const holder = newEmail === undefined ? undefined : await services.accounts.get(normalizeEmail(newEmail));
      if (holder && holder.id !== account.id) throw new AppError('email_taken', 'an account with this email already exists', 409);
      if (Object.keys(changes).length) account = await services.accounts.updateProfile(account.id, changes);
      let verificationSent = false;
      if (newEmail !== undefined) {
        const mail = { tokens: services.accountTokens, mailer: services.mailer, issuer: services.config.issuer };
        ({ account, changed: verificationSent } = await services.accounts.changeEmail(account.id, newEmail, mail));
      }
      const fields = [...Object.keys(changes), ...(verificationSent ? ['email'] : [])];
      await recordChange(services, operator, 'account.update', account.id, { fields: fields.join(' '), verification_sent: verificationSent });
      print(account);
      return;
    }
    case 'list':
      parse(rest, {});
      print(await (await open()).accounts.list());
      return;
    case 'show':
      print(await show(await open(), oneId(parse(rest, {}).positionals)));
      return;
    case 'disable':
    case 'enable': {
      const id = oneId(parse(rest, {}).positionals);
      const services = await open();
      const account = await services.accounts.setDisabled(id, command === 'disable');
      await recordChange(services, operator, `account.${command}`, account.id);
      print(account);
      return;
    }
    case 'set-password': {
      const { values, positionals } = parse(rest, passwordOptions);
      const id = oneId(positionals);
      const password = await readPassword(values);
      const services = await open();
      const allowWeakPassword = values['allow-weak-password'] ?? false;
      const account = await services.accounts.setPassword(id, password, { allowWeakPassword });
      await recordChange(services, operator, 'account.password.set', account.id);
      if (allowWeakPassword) await auditWeakPassword(services, operator, account, 'set-password');
      print(account);
      return;
    }
    case 'set-roles': {
      const { values, positionals } = parse(rest, { role: { type: 'string', multiple: true } });
      const services = await open();
      const account = await services.accounts.setRoles(oneId(positionals), values.role ?? []);
      await recordChange(services, operator, 'account.roles.set', account.id, { roles: account.roles.join(' ') });
      print(account);
      return;
    }
    case 'reset-mfa': {
      const id = oneId(parse(rest, {}).positionals);
      const services = await open();
      const account = await required(services, id);
      const wasEnabled = await services.mfa.reset(account.id);
      await recordChange(services, operator, 'account.mfa.reset', account.id, { was_enabled: wasEnabled });
      // The owner hears of it, as when they turn it off themselves.
      if (wasEnabled) await services.mailer.send({ to: account.email, template: 'mfa-changed', data: { name: account.name, enabled: false, when: new Date().toISOString() } });
      print({ id: account.id, mfa: { enabled: false }, was_enabled: wasEnabled });
      return;
    }
    case 'sessions': {
      const services = await open();
      const account = await required(services, oneId(parse(rest, {}).positionals));
      print((await services.store.sessionsOf(account.id)).map(({ payload }) => sessionView(payload)));
      return;
    }
    case 'revoke-session': {
      const [id, session] = ids(parse(rest, {}).positionals, 2);
      const services = await open();
      const account = await required(services, id!);
      const found = (await services.store.sessionsOf(account.id)).find((s) => s.id === session || s.payload.uid === session);
      if (!found || !(await services.store.endSession(account.id, found.id))) throw new AppError('session_not_found', 'no such session of this account', 404);
      // The uid names it in the record: the id is the session cookie's value.
      const uid = typeof found.payload.uid === 'string' ? found.payload.uid : null;
      await recordChange(services, operator, 'account.session.revoke', account.id, { session: uid });
      print({ id: account.id, session: uid, ended: true });
      return;
    }
    case 'delete': {
      const { values, positionals } = parse(rest, { 'keep-documents': { type: 'boolean' }, 'transfer-to': { type: 'string' } });
      const id = oneId(positionals);
      if (Boolean(values['keep-documents']) !== (values['transfer-to'] !== undefined)) throw new UsageError('--keep-documents and --transfer-to go together');
      const services = await open();
      const report = await eraseAccount(services, id, { transferTo: values['transfer-to'], actor: operator });
      await recordChange(services, operator, 'account.delete', report.id, {
        sessions: report.sessions, grants: report.grants, documents_deleted: report.documents.deleted,
        documents_transferred: report.documents.transferred, transferred_to: report.documents.transferred_to, shares_removed: report.shares_removed,
      });
      print({ ...report, deleted: true });
      return;
    }
    case 'import': {
      const file = oneId(parse(rest, {}).positionals);
      if (file !== '-') await access(file, constants.R_OK).catch(() => { throw new AppError('unreadable_file', `cannot read ${file}`); });
      await importFile(await open(), operator, file);
      return;
    }
    case 'export': {
      const { values, positionals } = parse(rest, { 'with-hashes': { type: 'boolean' } });
      if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      const services = await open();
      const withHashes = values['with-hashes'] ?? false;
      let count = 0;
      for await (const line of new AccountTransfer(services.connection, services.accounts, services.accountTokens, services.secrets).export(withHashes)) {
        await writeLine(line);
        count += 1;
      }
      await recordChange(services, operator, 'account.export', null, { accounts: count, with_hashes: withHashes });
      return;
    }
    default:
      throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  }
});
