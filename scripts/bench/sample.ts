/** What one run of a scenario yields, before CPU and commands are added (measure.ts). */
import autocannon from 'autocannon';
import { options, say } from './options.ts';

/**
 * ops: operations completed (2xx answers, or whole sign-ins), for the rate; errors: any other
 * outcome. handled: what the servers worked on, the divisor of CPU time and commands: autocannon
 * stops at the deadline with up to one request per connection unanswered, which the server still
 * serves (about 1% of a run's work at 32 connections).
 */
export interface Sample { ops: number; handled: number; errors: number; seconds: number; p50: number; p99: number }

/** autocannon with the bench's connections and duration; any non-2xx answer is an error. */
export async function cannon(name: string, request: autocannon.Options): Promise<Sample> {
  const result = await autocannon({ connections: options.connections, duration: options.seconds, ...request });
  const errors = result.errors + result.timeouts + result.non2xx;
  if (errors > 0) {
    const statuses = Object.entries(result.statusCodeStats ?? {}).filter(([code]) => !code.startsWith('2')).map(([code, { count }]) => `${code} x${count}`);
    say(`${name}: ${result.errors} errors, ${result.timeouts} timeouts, ${result.non2xx} non-2xx${statuses.length ? ` (${statuses.join(', ')})` : ''}`);
  }
  // `sent` is in autocannon's result but not in its types.
  const sent = (result.requests as { sent?: number }).sent ?? result.requests.total;
  const unanswered = Math.max(0, sent - result.requests.total - result.errors - result.timeouts);
  return { ops: result['2xx'], handled: result['2xx'] + unanswered, errors, seconds: result.duration, p50: result.latency.p50, p99: result.latency.p99 };
}

/** RFC 6749 section 2.3.1: client id and secret are form-urlencoded before HTTP Basic. */
export function basicAuth(id: string, secret: string): string {
  const encode = (value: string) => new URLSearchParams({ v: value }).toString().slice(2);
  return `Basic ${Buffer.from(`${encode(id)}:${encode(secret)}`).toString('base64')}`;
}

export const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
