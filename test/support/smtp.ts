/**
 * A real SMTP server on a loopback port that keeps every message it accepts, parsed, so tests read
 * verification and reset links out of the mail the provider actually sent. A message is stored
 * before the server acknowledges it: once `send` resolves, the mail is already in `messages`.
 * Resilience tests stop it and start it again on the same port, and can have it refuse recipients,
 * and use a silent server (`startSilentServer`) for one that is stuck.
 */
import net, { type AddressInfo } from 'node:net';
import { simpleParser, type AddressObject, type ParsedMail } from 'mailparser';
import { SMTPServer, type SMTPServerDataStream } from 'smtp-server';

export interface CapturedMail {
  /** Addresses of the To header. */
  readonly to: readonly string[];
  /** The From header, e.g. `Example ID <id@example.com>`. */
  readonly from: string;
  readonly subject: string;
  /** Empty when the message has no plain-text part. */
  readonly text: string;
  /** Empty when the message has no HTML part. */
  readonly html: string;
}

export interface SmtpCapture {
  /** `smtp://127.0.0.1:PORT`, ready for SMTP_URL. */
  readonly url: string;
  /** Every message accepted since the start (or the last `clear`), oldest first. */
  readonly messages: readonly CapturedMail[];
  /** The first message, received or still to come, that matches; rejects after `timeoutMs`. */
  waitFor(predicate: (mail: CapturedMail) => boolean, timeoutMs?: number): Promise<CapturedMail>;
  clear(): void;
  /** Stops listening (connections are refused) and keeps `messages`; `start` listens again on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
  close(): Promise<void>;
}

export interface SmtpCaptureOptions {
  /** Listen on this port instead of one the system picks (e.g. where a stopped server was). */
  readonly port?: number;
  /** An SMTP reply code (550 permanent, 451 transient) to refuse a recipient with; undefined accepts. */
  readonly refuseRecipient?: (address: string) => number | undefined;
}

interface Waiter {
  readonly predicate: (mail: CapturedMail) => boolean;
  /** Settles the waiter's promise (with the mail, or with an error) and stops its timer. */
  readonly settle: (outcome: CapturedMail | Error) => void;
}

function addresses(header: AddressObject | AddressObject[] | undefined): string[] {
  return [header ?? []].flat().flatMap((group) => group.value).flatMap((entry) => (entry.address ? [entry.address] : []));
}

function captured(parsed: ParsedMail): CapturedMail {
  return {
    to: addresses(parsed.to),
    from: parsed.from?.text ?? '',
    subject: parsed.subject ?? '',
    text: parsed.text ?? '',
    html: parsed.html || '',
  };
}

/** A predicate that throws fails the wait instead of escaping into the SMTP server. */
function offer(waiter: Waiter, mail: CapturedMail): boolean {
  try {
    if (!waiter.predicate(mail)) return false;
    waiter.settle(mail);
  } catch (error) {
    waiter.settle(error instanceof Error ? error : new Error(String(error)));
  }
  return true;
}

function summary(messages: readonly CapturedMail[]): string {
  if (messages.length === 0) return 'no mail at all';
  return messages.map((mail) => `"${mail.subject}" to ${mail.to.join(', ')}`).join('; ');
}

function listen(server: SMTPServer, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // Port 0: the system picks a free port, with no window for another process to take it.
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.server.address() as AddressInfo).port);
    });
  });
}

function refusal(code: number): Error {
  return Object.assign(new Error(code >= 500 ? 'No such mailbox here' : 'Try again later'), { responseCode: code });
}

export async function startSmtpCapture(options: SmtpCaptureOptions = {}): Promise<SmtpCapture> {
  const messages: CapturedMail[] = [];
  const waiters = new Set<Waiter>();

  const accept = async (stream: SMTPServerDataStream): Promise<void> => {
    const mail = captured(await simpleParser(stream));
    messages.push(mail);
    for (const waiter of waiters) offer(waiter, mail);
  };
  const create = () => {
    const server = new SMTPServer({
      disabledCommands: ['AUTH', 'STARTTLS'],
      authOptional: true,
      logger: false,
      // A reverse DNS lookup of 127.0.0.1 would add its latency to every message.
      disableReverseLookup: true,
      // Connections still open at close (a client that never sent QUIT) must not hold a test for 30 s.
      closeTimeout: 1000,
      onRcptTo(address, _session, callback) {
        const code = options.refuseRecipient?.(address.address);
        callback(code === undefined ? undefined : refusal(code));
      },
      onData(stream, _session, callback) {
        accept(stream).then(() => callback(), (error: Error) => callback(error));
      },
    });
    // A client dropping its connection is reported here; the client side sees its own error, and an
    // unhandled 'error' event would crash the test worker. (A failed listen still rejects in listen.)
    server.on('error', () => {});
    return server;
  };
  // A stopped server is not reused: a new one listens on the same port.
  let server: SMTPServer | undefined = create();
  const port = await listen(server, options.port ?? 0);
  const stop = () => new Promise<void>((resolve) => {
    const running = server;
    server = undefined;
    if (running) running.close(resolve);
    else resolve();
  });

  let closing: Promise<void> | undefined;
  return {
    url: `smtp://127.0.0.1:${port}`,
    messages,
    waitFor(predicate, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => waiter.settle(new Error(
          `no matching mail within ${timeoutMs} ms; received: ${summary(messages)}`)), timeoutMs);
        const waiter: Waiter = {
          predicate,
          settle(outcome) {
            clearTimeout(timer);
            waiters.delete(waiter);
            if (outcome instanceof Error) reject(outcome);
            else resolve(outcome);
          },
        };
        if (!messages.some((mail) => offer(waiter, mail))) waiters.add(waiter);
      });
    },
    clear() {
      messages.length = 0;
    },
    stop,
    async start() {
      if (server || closing) throw new Error(server ? 'the SMTP capture is already listening' : 'the SMTP capture was closed');
      const next = create();
      await listen(next, port);
      server = next;
    },
    close() {
      closing ??= (async () => {
        for (const waiter of waiters) waiter.settle(new Error('the SMTP capture was closed'));
        await stop();
      })();
      return closing;
    },
  };
}

/**
 * The first http(s) URL in a plain-text body, or the first whose path starts with `path`. Throws
 * with the text when there is none, so the failing test shows what the mail said instead.
 */
export function linkFrom(text: string, path?: string): string {
  for (const [candidate] of text.matchAll(/https?:\/\/[^\s<>"'`]+/g)) {
    // Sentence punctuation right after a link is not part of it.
    const link = candidate.replace(/[.,;:!?)\]]+$/, '');
    const url = URL.parse(link);
    if (url && (path === undefined || url.pathname.startsWith(path))) return link;
  }
  throw new Error(`no link${path === undefined ? '' : ` with a path starting ${path}`} in:\n${text}`);
}

export interface SilentServer {
  /** `smtp://127.0.0.1:PORT`; add `?greetingTimeout=MS` for a short wait. */
  readonly url: string;
  readonly port: number;
  /** When each connection came in (performance.now()), oldest first. */
  readonly connections: readonly number[];
  /** Drops the connections and stops listening: connections to the port are then refused. */
  close(): Promise<void>;
}

/** Accepts connections and never says a word, like an SMTP server that is stuck. */
export async function startSilentServer(): Promise<SilentServer> {
  const connections: number[] = [];
  const held = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections.push(performance.now());
    held.add(socket);
    socket.on('close', () => held.delete(socket));
    // The client giving up resets the connection; that is expected here.
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `smtp://127.0.0.1:${port}`,
    port,
    connections,
    async close() {
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
