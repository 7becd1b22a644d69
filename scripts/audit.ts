/**
 * `npm run -s audit -- tail|export`: the audit trail as JSON lines (README "Admin CLI"): sign-in
 * attempts, account and document changes, refused accesses, and every change made with the CLI.
 */
import { parse, runCli, UsageError } from './cli.ts';
import type { AuditLog } from '../src/audit/log.ts';

const USAGE = `usage: npm run -s audit -- <command>
  tail [--actor SUB] [--action A] [--since ISO-8601] [--limit N]
      the latest matching events (default 100, at most 10000), oldest first
  export --since ISO-8601 [--until ISO-8601] [--actor SUB] [--action A]
      every matching event in that time, oldest first (for archiving or a SIEM)
One JSON object per line: id, time, actor (sub and client_id; operator:NAME for CLI changes),
action, target, outcome, reason, details, ip, request id.
--action takes an action (signin.failure) or a prefix ending in a dot (signin., keys., account.).`;

const ISO_DATE = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?)?$/;
const EXPORT_PAGE = 1000;

function date(flag: string, value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const parsed = new Date(value);
  if (!ISO_DATE.test(value) || Number.isNaN(parsed.getTime())) throw new UsageError(`--${flag} expects an ISO 8601 date or time, got "${value}"`);
  return parsed;
}

function write(events: Awaited<ReturnType<AuditLog['tail']>>): void {
  for (const { _id, at, ...event } of events) process.stdout.write(`${JSON.stringify({ id: _id, at: at.toISOString(), ...event })}\n`);
}

await runCli(USAGE, async ([command, ...rest], open) => {
  if (command !== 'tail' && command !== 'export') throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  const { values, positionals } = parse(rest, {
    actor: { type: 'string' }, action: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, limit: { type: 'string' },
  });
  if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const since = date('since', values.since);
  const until = date('until', values.until);
  if (values.actor !== undefined && !/^[\w.:@-]{1,200}$/.test(values.actor)) throw new UsageError('--actor expects a subject identifier');
  if (values.action !== undefined && !/^[a-z][\w.-]{0,99}$/i.test(values.action)) throw new UsageError('--action expects an action such as signin.failure, or a prefix such as signin.');
  const filter = { actor: values.actor, action: values.action, since };

  if (command === 'tail') {
    if (until) throw new UsageError('--until goes with export');
    const limit = values.limit === undefined ? 100 : Number(values.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError('--limit expects a whole number from 1 to 10000');
    write(await (await open()).audit.tail({ ...filter, limit }));
    return;
  }
  if (!since) throw new UsageError('export needs --since');
  if (values.limit !== undefined) throw new UsageError('--limit goes with tail');
  // Page by id (time order), so a long export never holds everything in memory.
  const { audit } = await open();
  for (let after: string | undefined; ;) {
    const page = await audit.page({ ...filter, until, after, limit: EXPORT_PAGE });
    write(page);
    if (page.length < EXPORT_PAGE) return;
    after = page[page.length - 1]!._id;
  }
}, { operator: false });
