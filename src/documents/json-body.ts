/**
 * JSON request bodies for the documents API, parsed so that no text is silently altered.
 *
 * The usual body parser decodes bytes with replacement, so invalid UTF-8 arrives as U+FFFD, and
 * JSON.parse keeps escaped lone surrogates ("\ud800") that MongoDB then stores as U+FFFD. Here the
 * bytes are read unchanged (latin1 maps each byte to one code unit), decoded as strict UTF-8, and
 * every key and string of the parsed value must be well-formed UTF-16: anything else is a 400 that
 * names where it is.
 */
import { bodyParser } from '@koa/bodyparser';
import type { Middleware } from 'koa';
import { ApiProblem, type FieldError } from './problem.ts';
import { isWellFormed, pointerTo } from './schema.ts';

const utf8 = new TextDecoder('utf-8', { fatal: true });

function badBody(detail: string, errors: FieldError[]): ApiProblem {
  return new ApiProblem('bad-request', 400, `The request body ${detail}.`, { errors });
}

/** Every key or string that is not well-formed, and every "__proto__" key, as JSON pointers. */
function malformedText(value: unknown, path: (string | number)[], found: FieldError[]): FieldError[] {
  if (found.length >= 20) return found;
  if (typeof value === 'string') {
    if (!isWellFormed(value)) found.push({ pointer: pointerTo(path), detail: 'must be well-formed Unicode (no lone surrogates)' });
  } else if (Array.isArray(value)) {
    value.forEach((item, index) => malformedText(item, [...path, index], found));
  } else if (value !== null && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      // Refused as co-body did: merged into an object later, it would set the prototype.
      if (key === '__proto__') found.push({ pointer: pointerTo([...path, key]), detail: 'is not an accepted field name' });
      else if (!isWellFormed(key)) found.push({ pointer: pointerTo(path), detail: 'has a field name that is not well-formed Unicode' });
      malformedText(item, [...path, key], found);
    }
  }
  return found;
}

/** Parses the raw text bodyParser left, or throws a 400 problem naming what is wrong. */
export function parseJsonText(raw: string): unknown {
  let text: string;
  try {
    text = utf8.decode(Buffer.from(raw, 'latin1'));
  } catch {
    throw badBody('is not valid UTF-8', [{ pointer: '', detail: 'is not valid UTF-8' }]);
  }
  if (!/^[\x20\x09\x0a\x0d]*[{[]/.test(text)) {
    throw badBody('is not a JSON object', [{ pointer: '', detail: 'must be a JSON object' }]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw badBody('is not valid JSON', [{ pointer: '', detail: 'is not valid JSON' }]);
  }
  const errors = malformedText(value, [], []);
  if (errors.length) {
    throw new ApiProblem('validation-error', 400, `The request body is not valid: ${errors.map((e) => `${e.pointer} ${e.detail}`).join('; ')}.`, { errors });
  }
  return value;
}

const READABLE_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii']);

/**
 * A body that could not be read, as a problem. co-body's errors are not fit to pass on: a parse
 * error carries the raw body (err.body), a corrupt gzip/deflate/br body fails in zlib with no status
 * (it was a 500), and an unknown Content-Encoding is a 415 without `expose`. Only our own misuse of
 * the parser stays a 500.
 */
function bodyProblem(error: unknown): never {
  const { status, type } = error as { status?: unknown; type?: unknown };
  if (status === 413) throw new ApiProblem('payload-too-large', 413, 'The request body is too large.');
  if (status === 415) throw new ApiProblem('unsupported-media-type', 415, 'The request body\'s Content-Encoding is not supported: send it as identity, gzip, deflate or br.');
  if (type === 'stream.encoding.set') throw new Error('the request stream was given an encoding before the body parser read it');
  throw badBody('could not be read', [{ pointer: '', detail: 'could not be read (cut short, or corrupt compressed data)' }]);
}

/** Reads an application/json body of at most `limit` and puts the parsed value on ctx.request.body. */
export function jsonBody(limit: string): Middleware {
  const read = bodyParser({
    enableTypes: ['text'], extendTypes: { text: ['application/json'] }, textLimit: limit, encoding: 'latin1', onError: bodyProblem,
  });
  return (ctx, next) => {
    const charset = ctx.request.charset.toLowerCase();
    // Decoded as UTF-8 whatever it says (RFC 8259 8.1): a body declared in another charset would be misread.
    if (charset && !READABLE_CHARSETS.has(charset) && ctx.is('application/json')) {
      throw new ApiProblem('unsupported-media-type', 415, 'Send the request body as UTF-8 application/json.');
    }
    return read(ctx, async () => {
      const raw = ctx.request.body;
      if (typeof raw === 'string' && ctx.is('application/json')) ctx.request.body = raw === '' ? undefined : parseJsonText(raw);
      await next();
    });
  };
}
