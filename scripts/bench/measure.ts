/**
 * One measured run of a scenario: CPU time of each server process and the provider's MongoDB
 * command counts are read just before and just after it, and divided by the operations completed.
 */
import { cpuMs } from './proc.ts';
import { readCounts } from './processes.ts';
import type { Sample } from './sample.ts';

/** The processes serving a system; a pid is undefined when the bench did not start that process. */
export interface Processes { node: number; database?: number | undefined; redis?: number | undefined; countsUrl?: string | undefined }

type Part = 'node' | 'database' | 'redis';
const PARTS: Part[] = ['node', 'database', 'redis'];

export interface Measurement extends Sample {
  rate: number;
  /** CPU ms per operation by process; undefined where the pid is unknown. */
  cpuPerOp: Partial<Record<Part, number>>;
  /** Commands issued for requests during the run, by "command collection" (totals, not per op). */
  commands?: Record<string, number>;
  /** Commands the provider's timers issued during the run. */
  background?: Record<string, number>;
}

/**
 * Before a run: lets the previous one's garbage collection finish. After it: lets the server finish
 * the requests autocannon left unanswered (counted in `handled`), which takes about a p99 once the
 * load stops (seconds for the documents list on FerretDB), within a bound.
 */
const SETTLE_MS = 250;
const MAX_SETTLE_MS = 5000;
const settle = (ms = SETTLE_MS) => new Promise((r) => setTimeout(r, Math.min(MAX_SETTLE_MS, Math.max(SETTLE_MS, ms))));

function cpuOf(processes: Processes): Partial<Record<Part, number>> {
  return Object.fromEntries(PARTS.flatMap((part) => (processes[part] === undefined ? [] : [[part, cpuMs(processes[part])]])));
}

function difference(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).map(([key, n]) => [key, n - (before[key] ?? 0)]).filter(([, n]) => n !== 0));
}

export async function measure(processes: Processes, run: () => Promise<Sample>): Promise<Measurement> {
  await settle();
  const countsBefore = await readCounts(processes.countsUrl);
  const cpuBefore = cpuOf(processes);
  const sample = await run();
  if (sample.handled > sample.ops) await settle(sample.p99);
  const cpuAfter = cpuOf(processes);
  const countsAfter = await readCounts(processes.countsUrl);
  const cpuPerOp = Object.fromEntries(Object.entries(cpuAfter).map(([part, ms]) => [part, (ms - cpuBefore[part as Part]!) / sample.handled]));
  return {
    ...sample,
    rate: sample.ops / sample.seconds,
    cpuPerOp,
    ...(countsBefore && countsAfter ? {
      commands: difference(countsAfter.request, countsBefore.request),
      background: difference(countsAfter.background, countsBefore.background),
    } : {}),
  };
}
