/**
 * Input validation for the documents API. Objects are strict, so unknown keys, including
 * "$"-prefixed operators and "__proto__", are refused; every value has a type and a bound. The
 * same limits are stated in openapi.ts.
 */
import { z } from 'zod';
import { isValidEmail } from '../accounts/service.ts';
import { UUID_V7 } from '../ids.ts';
import { ApiProblem, type FieldError } from './problem.ts';

export const LIMITS = {
  titleLength: 200,
  contentBytes: 1024 * 1024,
  tagLength: 50,
  tags: 20,
  queryLength: 200,
  filenameLength: 255,
  pageSize: { min: 1, max: 100, default: 20 },
} as const;

/**
 * Patterns shared with openapi.ts, as JSON Schema (ECMA-262, unicode mode) pattern text, so the
 * contract states exactly what is enforced here.
 */
export const PATTERNS = {
  // Printable text: no control characters (they break logs, headers and terminals), and no lone
  // surrogates (Cs), which cannot be stored as UTF-8.
  printable: '^[^\\p{Cc}\\p{Cs}]*$',
  // Printable and not blank: at least one character that is not white space.
  printableNotBlank: '^[^\\p{Cc}\\p{Cs}]*[^\\p{Cc}\\p{Cs}\\s][^\\p{Cc}\\p{Cs}]*$',
  wellFormed: '^\\P{Cs}*$',
  filename: '^[^\\p{Cc}\\p{Cs}/\\\\"]+$',
  limit: '^[0-9]{1,3}$',
  uuidV7: UUID_V7.source,
  uuid: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$',
  /**
   * Idempotency-Key: an RFC 8941 String, in double quotes: 1 to 255 printable ASCII characters,
   * with a double quote or backslash escaped by a backslash.
   */
  idempotencyKey: '^"(?:[ !#-\\[\\]-~]|\\\\["\\\\]){1,255}"$',
  /** The address rule of isValidEmail (accounts/service.ts): at most 64 characters before the @. */
  email: "^(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]{2,63}$",
} as const;

/** No lone surrogates (String.prototype.isWellFormed). */
export const isWellFormed = (text: string): boolean => text.isWellFormed();

const re = (pattern: string) => new RegExp(pattern, 'u');
const PRINTABLE = re(PATTERNS.printable);
const NOT_BLANK = /\S/u;

/**
 * A string of at most `max` characters, counted as JSON Schema's maxLength counts them (code
 * points, so an emoji is one). Longer UTF-16 text is refused before it is split.
 */
const chars = (max: number) => z.string()
  .refine((s) => s.length <= 2 * max && [...s].length <= max, `must be at most ${max} characters`);

const title = chars(LIMITS.titleLength).regex(PRINTABLE, 'must not contain control characters')
  .regex(NOT_BLANK, 'must not be blank');
const content = z.string().refine(isWellFormed, 'must be well-formed Unicode (no lone surrogates)')
  .refine((s) => Buffer.byteLength(s) <= LIMITS.contentBytes, `must be at most ${LIMITS.contentBytes} bytes (UTF-8)`);
const tag = chars(LIMITS.tagLength).min(1).regex(PRINTABLE, 'must not contain control characters');
const tags = z.array(tag).max(LIMITS.tags).refine((list) => new Set(list).size === list.length, 'must not repeat a tag');

export const createBody = z.strictObject({ title, content: content.optional(), tags: tags.optional() });

export const patchBody = z.strictObject({ title: title.optional(), content: content.optional(), tags: tags.optional() })
  .refine((patch) => Object.keys(patch).length > 0, 'must change at least one of title, content, tags');

export const shareBody = z.strictObject({
  // Taken as sent (no trimming): PATTERNS.email, the contract's statement of isValidEmail, is the
  // whole rule (the pages suite checks the two agree).
  email: z.string().max(254).refine(isValidEmail, 'must be an email address'),
  role: z.enum(['viewer', 'editor']),
});

const cursor = z.string().max(64).transform((value, ctx) => {
  const id = Buffer.from(value, 'base64url').toString('latin1');
  if (!UUID_V7.test(id)) {
    ctx.addIssue({ code: 'custom', message: 'is not a cursor returned by this API' });
    return z.NEVER;
  }
  return id;
});

export const listQuery = z.strictObject({
  limit: z.string().regex(re(PATTERNS.limit), 'must be a whole number').transform(Number)
    .pipe(z.number().min(LIMITS.pageSize.min).max(LIMITS.pageSize.max)).optional(),
  cursor: cursor.optional(),
  tag: tag.optional(),
  q: chars(LIMITS.queryLength).min(1).regex(PRINTABLE, 'must not contain control characters').optional(),
});

export const fileQuery = z.strictObject({
  filename: chars(LIMITS.filenameLength).min(1)
    .regex(re(PATTERNS.filename), 'must not contain control characters, quotes or slashes').optional(),
});

export const noQuery = z.strictObject({});

export const documentId = z.string().regex(UUID_V7, 'must be a document id');
export const userId = z.string().regex(re(PATTERNS.uuid), 'must be a user id');

export const encodeCursor = (id: string): string => Buffer.from(id, 'latin1').toString('base64url');

type Where = 'body' | 'query' | 'path';

/** RFC 6901: the whole body is "", a field "/title", an array item "/tags/0". */
export const pointerTo = (path: readonly PropertyKey[]): string =>
  path.map((p) => `/${String(p).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');

const WHERE_TEXT: Record<Where, string> = { body: 'The request body', query: 'The query string', path: 'The URL' };

function problemFor(where: Where, errors: FieldError[]): ApiProblem {
  const named = errors.map((e) => `${e.pointer !== undefined ? e.pointer || '(the body)' : e.parameter} ${e.detail}`).join('; ');
  return new ApiProblem('validation-error', 400, `${WHERE_TEXT[where]} is not valid: ${named}.`, { errors });
}

/**
 * Parses or throws a 400 problem listing every offending field: a JSON pointer into the body, or
 * the name of the query or path parameter (`name`, for a path parameter validated on its own).
 */
export function validate<T extends z.ZodType>(schema: T, value: unknown, where: Where, name?: string): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const errors: FieldError[] = result.error.issues.flatMap((issue) => {
    const keys = issue.code === 'unrecognized_keys' ? issue.keys.map((key) => [...issue.path, key]) : [issue.path];
    const detail = issue.code === 'unrecognized_keys' ? 'is not a recognised field' : issue.message;
    return keys.map((path): FieldError => (where === 'body'
      ? { detail, pointer: pointerTo(path) }
      : { detail, parameter: name ?? String(path[0] ?? '') }));
  });
  throw problemFor(where, errors);
}

/**
 * The query parameters, after checking the raw query string decodes as UTF-8: Koa's parser
 * would otherwise turn a bad escape such as %ED%A0%80 (a lone surrogate) into U+FFFD.
 */
export function queryOf(ctx: { querystring: string; query: unknown }): unknown {
  const errors: FieldError[] = [];
  for (const pair of ctx.querystring ? ctx.querystring.split('&') : []) {
    const [key = '', value = ''] = pair.split(/=(.*)/s);
    const decode = (text: string) => decodeURIComponent(text.replace(/\+/g, ' '));
    let parameter = key;
    try {
      parameter = decode(key);
      decode(value);
    } catch {
      errors.push({ parameter: isWellFormed(parameter) ? parameter : key, detail: 'is not valid percent-encoded UTF-8' });
    }
  }
  if (errors.length) throw problemFor('query', errors);
  return ctx.query;
}
