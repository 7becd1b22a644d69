/**
 * The body parser of our HTML forms (sign-in, registration, reset, account pages). Whatever
 * arrives, a body that cannot be read is the client's error: 400 (unreadable: malformed JSON,
 * corrupt gzip/deflate/br, cut short), 413 (too large) or 415 (a type, charset or Content-Encoding
 * we do not take), answered as an AppError so the page is the route's usual error page.
 *
 * co-body's own errors are not fit to be thrown on: a parse error carries the raw body (err.body,
 * password included) and no `expose`, and zlib's errors on a corrupt compressed body carry no
 * status at all, so both ended as 500s logged in full. The original error is dropped here.
 */
import { bodyParser } from '@koa/bodyparser';
import type { Middleware } from 'koa';
import { AppError } from './errors.ts';

const FORM = 'application/x-www-form-urlencoded';
const JSON_TYPE = 'application/json';
/** What the parser decodes the bytes as; a body declared in another charset would be misread. */
const READABLE_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii']);

export interface FormBodyOptions {
  /** Also accept application/json (the sign-in forms, for scripted clients). */
  json?: boolean;
  /** The most a body may be, after decompression. */
  limit?: string;
}

const unreadable = () => new AppError('body_unreadable', 'The submitted form could not be read. Go back, reload the page and try again.', 400);
const tooLarge = () => new AppError('body_too_large', 'The submitted form is too large.', 413);
const unsupported = () => new AppError('body_unsupported', 'This address only accepts forms sent by the page.', 415);

/** What went wrong reading a body, as our answer; only our own misuse of the parser stays a 500. */
function bodyError(error: unknown): never {
  const { status, type } = error as { status?: unknown; type?: unknown };
  if (status === 413) throw tooLarge();
  if (status === 415) throw unsupported();
  if (type === 'stream.encoding.set') throw new Error('the request stream was given an encoding before the body parser read it');
  throw unreadable();
}

/** A Koa middleware that puts the parsed form (or JSON object) on ctx.request.body. */
export function formBody({ json = false, limit = '8kb' }: FormBodyOptions = {}): Middleware {
  const types = json ? [FORM, JSON_TYPE] : [FORM];
  const parse = bodyParser({
    enableTypes: json ? ['form', 'json'] : ['form'],
    formLimit: limit, jsonLimit: limit, encoding: 'utf-8',
    onError: bodyError,
  });
  return async (ctx, next) => {
    // A POST with no body at all is left to the route (its CSRF check refuses it).
    const sent = ctx.request.length !== undefined ? ctx.request.length > 0 : ctx.get('transfer-encoding') !== '';
    if (sent && ['POST', 'PUT', 'PATCH'].includes(ctx.method)) {
      const charset = ctx.request.charset.toLowerCase();
      if (!ctx.is(types) || (charset && !READABLE_CHARSETS.has(charset))) {
        throw unsupported();
      }
    }
    await parse(ctx, next);
  };
}
