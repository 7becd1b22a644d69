/**
 * API errors as RFC 9457 problem details. Every refusal the documents API makes is an ApiProblem;
 * the API's error middleware (routes.ts) turns it, or any stray error, into application/problem+json.
 * Type URIs are tag URIs (RFC 4151): stable identifiers that are not meant to be dereferenced.
 */
export type ProblemCode =
  | 'bad-request' | 'validation-error' | 'invalid-token' | 'insufficient-scope' | 'forbidden' | 'not-found'
  | 'method-not-allowed' | 'conflict' | 'precondition-failed' | 'payload-too-large' | 'unsupported-media-type'
  | 'idempotency-key-in-use' | 'idempotency-key-reused' | 'server-error' | 'service-unavailable';

export const PROBLEM_TITLES: Record<ProblemCode, string> = {
  'bad-request': 'The request is malformed',
  'validation-error': 'The request is not valid',
  'invalid-token': 'The access token is missing or not valid',
  'insufficient-scope': 'The access token lacks a required scope',
  forbidden: 'You may not do this to this document',
  'not-found': 'Not found',
  'method-not-allowed': 'Method not allowed',
  conflict: 'The document changed while this request was applied',
  'precondition-failed': 'The document has changed since you read it',
  'payload-too-large': 'The request body is too large',
  'unsupported-media-type': 'The media type is not supported',
  'idempotency-key-in-use': 'A request with this Idempotency-Key is still being processed',
  'idempotency-key-reused': 'This Idempotency-Key was used for a different request',
  'server-error': 'Something went wrong on our side',
  'service-unavailable': 'The service is temporarily unavailable',
};

export const problemType = (code: ProblemCode): string => `tag:oidc-idp,2026:problems:${code}`;

/** One offending input: a JSON pointer into the body, or the name of a query parameter. */
export interface FieldError {
  detail: string;
  pointer?: string;
  parameter?: string;
}

export class ApiProblem extends Error {
  readonly code: ProblemCode;
  readonly status: number;
  readonly errors: FieldError[] | undefined;
  readonly headers: Record<string, string>;

  constructor(code: ProblemCode, status: number, detail: string, options: { errors?: FieldError[]; headers?: Record<string, string> } = {}) {
    super(detail);
    this.name = 'ApiProblem';
    this.code = code;
    this.status = status;
    this.errors = options.errors;
    this.headers = options.headers ?? {};
  }

  body(): Record<string, unknown> {
    return {
      type: problemType(this.code),
      title: PROBLEM_TITLES[this.code],
      status: this.status,
      detail: this.message,
      ...(this.errors ? { errors: this.errors } : {}),
    };
  }
}

export const notFound = () => new ApiProblem('not-found', 404, 'No document with this id exists or it is not shared with you.');
