/** The bench's table: the median of the rounds for each column, and the lines under it. */
import type { Measurement } from './measure.ts';
import { median, range } from './stats.ts';

/**
 * What a scenario should reach. rps/p99: the existing targets; cpuMs and commands: issue 10's
 * ceilings per operation (CPU of node + database + Redis; MongoDB commands issued for requests).
 */
export interface Target { rps?: number; p99?: number; unit?: string; cpuMs?: number; commands?: number }

export interface ScenarioResult {
  key: string;
  label: string;
  system: 'ours' | 'bare';
  target?: Target | undefined;
  runs: Measurement[];
}

/** Issue 10: ours must reach this share of bare oidc-provider's rate. */
export const BARE_RATIO_GOALS: Record<string, number> = { client_credentials: 0.35, introspection: 0.3 };

const PARTS = ['node', 'database', 'redis'] as const;
const fixed = (value: number, digits: number) => (Number.isFinite(value) ? value.toFixed(digits) : 'n/a');

interface Summary { rate: number; min: number; max: number; p50: number; p99: number; cpu: Record<string, number | undefined>; total: number | undefined; commands: number | undefined; errors: number }

/** Medians over the rounds; a CPU part is undefined when no run knew its pid. */
export function summarise(result: ScenarioResult): Summary {
  const { runs } = result;
  const rates = runs.map((r) => r.rate);
  const cpu = Object.fromEntries(PARTS.map((part) => [part, runs.every((r) => r.cpuPerOp[part] !== undefined) ? median(runs.map((r) => r.cpuPerOp[part]!)) : undefined]));
  // The total is only meaningful when every process it sums is known (bare has no database or Redis).
  const parts = result.system === 'bare' ? (['node'] as const) : PARTS;
  const total = runs.every((r) => parts.every((part) => r.cpuPerOp[part] !== undefined))
    ? median(runs.map((r) => parts.reduce((sum, part) => sum + r.cpuPerOp[part]!, 0))) : undefined;
  const commands = runs.every((r) => r.commands) ? median(runs.map((r) => sumOf(r.commands!) / r.handled)) : undefined;
  return {
    rate: median(rates), ...range(rates), p50: median(runs.map((r) => r.p50)), p99: median(runs.map((r) => r.p99)),
    cpu, total, commands, errors: runs.reduce((sum, r) => sum + r.errors, 0),
  };
}

const sumOf = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);

function targetCell(target: Target | undefined, s: Summary): string {
  if (!target) return '';
  const goals: [string, boolean | undefined][] = [];
  if (target.rps !== undefined) goals.push([`>= ${target.rps.toLocaleString('en-US')}${target.unit ?? ' req/s'}`, s.rate >= target.rps && s.errors === 0]);
  if (target.p99 !== undefined) goals.push([`p99 < ${target.p99} ms`, s.p99 < target.p99]);
  // Judged on the figures as printed (two decimals), so that a 1.00 shown is not a 1.004 missed.
  const shown = (value: number | undefined) => (value === undefined ? undefined : Math.round(value * 100) / 100);
  const atMost = (value: number | undefined, ceiling: number) => (value === undefined ? undefined : shown(value)! <= ceiling);
  if (target.cpuMs !== undefined) goals.push([`CPU <= ${target.cpuMs} ms`, atMost(s.total, target.cpuMs)]);
  if (target.commands !== undefined) goals.push([`<= ${target.commands} cmds`, atMost(s.commands, target.commands)]);
  return goals.map(([goal, met]) => `${goal}: ${met === undefined ? 'n/a' : met ? 'met' : 'missed'}`).join('; ');
}

export function table(results: ScenarioResult[]): string[] {
  const cell = (result: ScenarioResult, value: number | undefined, digits: number, part?: string) => {
    if (result.system === 'bare' && part !== undefined && part !== 'node') return '–';
    return value === undefined ? 'n/a' : fixed(value, digits);
  };
  return [
    '| scenario | req/s | min–max | p50 ms | p99 ms | CPU ms/op: node | database | Redis | total | MongoDB cmds/op | errors | target |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ...results.map((result) => {
      const s = summarise(result);
      return `| ${result.label} | ${fixed(s.rate, 0)} | ${fixed(s.min, 0)}–${fixed(s.max, 0)} | ${fixed(s.p50, 1)} | ${fixed(s.p99, 1)} | `
        + `${PARTS.map((part) => cell(result, s.cpu[part], 2, part)).join(' | ')} | ${cell(result, s.total, 2)} | `
        + `${result.system === 'bare' ? '–' : cell(result, s.commands, 2)} | ${s.errors} | ${targetCell(result.target, s)} |`;
    }),
  ];
}

/** ours/bare of the median rates, for the scenarios both systems ran. */
export function bareRatios(results: ScenarioResult[]): string[] {
  return Object.entries(BARE_RATIO_GOALS).flatMap(([key, goal]) => {
    const ours = results.find((r) => r.key === key && r.system === 'ours');
    const bare = results.find((r) => r.key === key && r.system === 'bare');
    if (!ours || !bare) return [];
    const [o, b] = [summarise(ours), summarise(bare)];
    const ratio = o.rate / b.rate;
    return [`ours/bare oidc-provider, ${key}: rate ${(ratio * 100).toFixed(0)}% (goal >= ${goal * 100}%: ${ratio >= goal ? 'met' : 'missed'}); `
      + `CPU per op ${fixed(o.total ?? NaN, 2)} ms vs ${fixed(b.total ?? NaN, 2)} ms`];
  });
}

/** Per scenario, the commands per operation by command and collection, over all rounds. */
export function commandBreakdown(results: ScenarioResult[]): string[] {
  return results.flatMap((result) => {
    if (result.system === 'bare' || !result.runs.every((r) => r.commands)) return [];
    const ops = result.runs.reduce((sum, r) => sum + r.handled, 0);
    const totals: Record<string, number> = {};
    for (const run of result.runs) for (const [key, n] of Object.entries(run.commands!)) totals[key] = (totals[key] ?? 0) + n;
    const parts = Object.entries(totals).sort(([, a], [, b]) => b - a).map(([key, n]) => `${key} ${(n / ops).toFixed(2)}`);
    return parts.length ? [`  ${result.key}: ${parts.join(', ')}`] : [];
  });
}

/** What the provider's timers issued during the measured runs (not in the table's counts). */
export function backgroundLine(results: ScenarioResult[]): string | undefined {
  const totals: Record<string, number> = {};
  let seconds = 0;
  for (const run of results.flatMap((r) => (r.system === 'ours' ? r.runs : []))) {
    if (!run.background) return undefined;
    seconds += run.seconds;
    for (const [key, n] of Object.entries(run.background)) totals[key] = (totals[key] ?? 0) + n;
  }
  const parts = Object.entries(totals).sort(([, a], [, b]) => b - a).map(([key, n]) => `${key} ${n}`);
  return `Background commands (timers, outside requests; not in the table) over ${seconds.toFixed(0)} s of runs: ${parts.length ? parts.join(', ') : 'none'}`;
}
