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

// Printable text: no control characters (they break logs, headers and terminals).
const PRINTABLE = /^[^\p{Cc}]*$/u;

const title = z.string().max(LIMITS.titleLength).regex(PRINTABLE, 'must not contain control characters')
  .refine((s) => s.trim().length > 0, 'must not be blank');
const content = z.string().refine((s) => Buffer.byteLength(s) <= LIMITS.contentBytes, `must be at most ${LIMITS.contentBytes} bytes (UTF-8)`);
const tag = z.string().min(1).max(LIMITS.tagLength).regex(PRINTABLE, 'must not contain control characters');
const tags = z.array(tag).max(LIMITS.tags).refine((list) => new Set(list).size === list.length, 'must not repeat a tag');

export const createBody = z.strictObject({ title, content: content.optional(), tags: tags.optional() });

export const patchBody = z.strictObject({ title: title.optional(), content: content.optional(), tags: tags.optional() })
  .refine((patch) => Object.keys(patch).length > 0, 'must change at least one of title, content, tags');

export const shareBody = z.strictObject({
  email: z.string().max(254).refine((email) => isValidEmail(email.trim().toLowerCase()), 'must be an email address'),
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
  limit: z.string().regex(/^\d{1,3}$/, 'must be a whole number').transform(Number)
    .pipe(z.number().min(LIMITS.pageSize.min).max(LIMITS.pageSize.max)).optional(),
  cursor: cursor.optional(),
  tag: tag.optional(),
  q: z.string().min(1).max(LIMITS.queryLength).regex(PRINTABLE, 'must not contain control characters').optional(),
});

export const fileQuery = z.strictObject({
  filename: z.string().min(1).max(LIMITS.filenameLength)
    .regex(/^[^\p{Cc}/\\"]+$/u, 'must not contain control characters, quotes or slashes').optional(),
});

export const noQuery = z.strictObject({});

export const documentId = z.string().regex(UUID_V7, 'must be a document id');
export const userId = z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'must be a user id');

export const encodeCursor = (id: string): string => Buffer.from(id, 'latin1').toString('base64url');

type Where = 'body' | 'query' | 'path';

/** Parses or throws a 400 problem listing every offending field. */
export function validate<T extends z.ZodType>(schema: T, value: unknown, where: Where): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const errors: FieldError[] = result.error.issues.flatMap((issue) => {
    const keys = issue.code === 'unrecognized_keys' ? issue.keys.map((key) => [...issue.path, key]) : [issue.path];
    const detail = issue.code === 'unrecognized_keys' ? 'is not a recognised field' : issue.message;
    return keys.map((path): FieldError => (where === 'body'
      ? { detail, pointer: `/${path.map((p) => String(p).replace(/~/g, '~0').replace(/\//g, '~1')).join('/')}` }
      : { detail, parameter: String(path[0] ?? '') }));
  });
  throw new ApiProblem('validation-error', 400, `The ${where === 'body' ? 'request body' : where === 'query' ? 'query string' : 'URL'} is not valid.`, { errors });
}
