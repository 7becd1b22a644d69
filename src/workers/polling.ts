/**
 * The loop of a background worker that works through a queue kept in MongoDB (the mail outbox,
 * back-channel logouts): one pass at a time, each deciding how long until the next; a pass that
 * throws (the database away) is logged once per outage and retried every `pollMs`. `wake` asks
 * for a pass now (new work was queued): at once when idle, right after the pass in progress
 * otherwise, and not at all while `mayWake` says the worker is backing off. Timers are unref'd:
 * a worker never keeps a process alive.
 */
import type { Logger } from '../observability/logger.ts';

export interface PassContext {
  /** True once stop was called: a long pass may end early. */
  stopped(): boolean;
  /** True when `wake` was called during this pass: more work is waiting. */
  woken(): boolean;
}

export interface PollingWorker {
  wake(): void;
  /** Stops the loop; resolves once the pass in progress is over. */
  stop(): Promise<void>;
}

export function startPolling(
  name: string, logger: Logger, pass: (context: PassContext) => Promise<number>,
  options: { pollMs: number; mayWake?: () => boolean },
): PollingWorker {
  let stopped = false;
  let again = false;
  let failing = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  const context: PassContext = { stopped: () => stopped, woken: () => again };
  const schedule = (ms: number) => {
    timer = setTimeout(run, ms);
    timer.unref();
  };
  const run = () => {
    timer = undefined;
    again = false;
    running = pass(context).then((delayMs) => {
      if (failing) logger.info(`${name}: the database answers again`);
      failing = false;
      return delayMs;
    }, (error: unknown) => {
      if (!failing) logger.error({ err: error }, `${name}: pass failed; retrying`);
      failing = true;
      return options.pollMs;
    }).then((delayMs) => {
      running = undefined;
      if (!stopped) schedule(delayMs);
    });
  };
  schedule(0);
  return {
    wake() {
      if (running) again = true;
      else if (!stopped && (options.mayWake?.() ?? true)) {
        clearTimeout(timer);
        schedule(0);
      }
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
