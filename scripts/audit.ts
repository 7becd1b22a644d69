/** `npm run -s audit -- tail [--actor SUB] [--since ISO] [--limit N]`: the audit trail as JSON lines. */
import { parse, runCli, UsageError } from './cli.ts';

const USAGE = `usage: npm run -s audit -- tail [--actor SUB] [--since ISO-8601] [--limit N]
Prints the latest matching audit events (default 100, at most 10000), oldest first, one JSON
object per line: time, actor (sub and client_id), action, target, outcome, reason, ip, request id.`;

const ISO_DATE = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?)?$/;

await runCli(USAGE, async ([command, ...rest], open) => {
  if (command !== 'tail') throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  const { values, positionals } = parse(rest, {
    actor: { type: 'string' }, since: { type: 'string' }, limit: { type: 'string' },
  });
  if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const since = values.since === undefined ? undefined : new Date(values.since);
  if (since && (!ISO_DATE.test(values.since!) || Number.isNaN(since.getTime()))) {
    throw new UsageError(`--since expects an ISO 8601 date or time, got "${values.since}"`);
  }
  const limit = values.limit === undefined ? 100 : Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError('--limit expects a whole number from 1 to 10000');
  if (values.actor !== undefined && !/^[\w.:@-]{1,200}$/.test(values.actor)) throw new UsageError('--actor expects a subject identifier');

  const events = await (await open()).audit.tail({ actor: values.actor, since, limit });
  for (const { _id, at, ...event } of events) {
    process.stdout.write(`${JSON.stringify({ id: _id, at: at.toISOString(), ...event })}\n`);
  }
}, { operator: false });
