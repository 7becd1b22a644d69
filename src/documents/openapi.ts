/**
 * OpenAPI 3.1 description of the documents API, served at /api/openapi.json. It is written by
 * hand next to the routes; the end-to-end tests validate every response they receive against it
 * and check that it lists exactly the routes the router serves.
 */
import type { Config } from '../config.ts';
import { PROBLEM_TITLES, problemType, type ProblemCode } from './problem.ts';
import { KEY_LIFETIME_MS } from './idempotency.ts';
import { LIMITS, PATTERNS } from './schema.ts';

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const dateTime = { type: 'string', format: 'date-time' };
const uuid = { type: 'string', format: 'uuid', pattern: PATTERNS.uuid };
const documentIdSchema = { type: 'string', format: 'uuid', pattern: PATTERNS.uuidV7, description: 'A UUIDv7 (RFC 9562), lower-case' };

// The text rules schema.ts enforces. Lengths count characters (code points), as maxLength does.
const titleSchema = {
  type: 'string', minLength: 1, maxLength: LIMITS.titleLength, pattern: PATTERNS.printableNotBlank,
  description: 'No control characters, and not only white space',
};
const tagSchema = {
  type: 'string', minLength: 1, maxLength: LIMITS.tagLength, pattern: PATTERNS.printable, description: 'No control characters',
};
const tagsSchema = { type: 'array', items: tagSchema, maxItems: LIMITS.tags, uniqueItems: true };
const contentSchema = {
  type: 'string', pattern: PATTERNS.wellFormed,
  description: `Any text, line breaks and other control characters included; at most ${LIMITS.contentBytes} bytes of UTF-8`,
};
const emailSchema = {
  type: 'string', maxLength: 254, pattern: PATTERNS.email,
  description: 'A plain address as sent (no surrounding spaces, display names, comments or lists); at most 64 characters before the @',
};

/** Problem responses by status, with the problem types each may carry. */
const PROBLEM_RESPONSES: Record<number, { description: string; codes: ProblemCode[] }> = {
  400: { description: 'Malformed or invalid input', codes: ['bad-request', 'validation-error'] },
  401: { description: 'No valid access token (see WWW-Authenticate)', codes: ['invalid-token'] },
  403: { description: 'Missing scope, or the caller may not do this to this document', codes: ['insufficient-scope', 'forbidden'] },
  404: { description: 'No such document, or not visible to the caller', codes: ['not-found'] },
  405: { description: 'Method not allowed', codes: ['method-not-allowed'] },
  409: {
    description: 'Concurrent changes kept this one from being applied, or a request with the same Idempotency-Key is still '
      + 'being processed; retry (after Retry-After, when given)',
    codes: ['conflict', 'idempotency-key-in-use'],
  },
  412: { description: 'If-Match does not match the current ETag', codes: ['precondition-failed'] },
  413: { description: 'Body or file too large', codes: ['payload-too-large'] },
  415: { description: 'Unsupported Content-Type or Content-Encoding', codes: ['unsupported-media-type'] },
  422: { description: 'The Idempotency-Key was used before for a request with different content', codes: ['idempotency-key-reused'] },
  500: { description: 'Unexpected server error', codes: ['server-error'] },
  503: {
    description: "A part the API depends on (the database, or the provider's keys for verifying tokens) is not answering; "
      + 'retry after Retry-After',
    codes: ['server-error', 'service-unavailable'],
  },
};

const retryAfter = { description: 'Seconds to wait before retrying', schema: { type: 'string', pattern: '^[0-9]+$' } };

/** Headers of the problem responses, by status. */
const PROBLEM_HEADERS: Record<string, Record<string, unknown>> = {
  401: { 'WWW-Authenticate': { description: 'RFC 6750 challenge (for token and scope problems)', schema: { type: 'string' } } },
  403: { 'WWW-Authenticate': { description: 'RFC 6750 challenge (for token and scope problems)', schema: { type: 'string' } } },
  405: { Allow: { description: 'The methods this path supports (RFC 9110 15.5.6)', required: true, schema: { type: 'string' } } },
  409: { 'Retry-After': retryAfter },
  503: { 'Retry-After': retryAfter },
};

function problems(...statuses: number[]) {
  return Object.fromEntries(statuses.map((status) => [String(status), { $ref: `#/components/responses/Problem${status}` }]));
}

const AUTHED = [401, 403, 500, 503];

const headers = {
  ETag: { description: 'The document version (strong entity tag)', schema: { type: 'string', pattern: '^"v[0-9]+"$' } },
  Location: { description: 'URL of the created resource', schema: { type: 'string' } },
};

const SUMMARY_REQUIRED = ['id', 'title', 'tags', 'owner', 'access', 'file', 'version', 'createdAt', 'updatedAt'];
const summaryProperties = {
  id: documentIdSchema,
  title: titleSchema,
  tags: tagsSchema,
  owner: ref('Owner'),
  access: { enum: ['owner', 'admin', 'editor', 'viewer'], description: "The caller's relation to the document" },
  file: { oneOf: [ref('FileInfo'), { type: 'null' }] },
  version: { type: 'integer', minimum: 1 },
  createdAt: dateTime,
  updatedAt: dateTime,
};

/** What a change answers: the document, without its content for a token lacking documents:read. */
const written = { oneOf: [ref('Document'), ref('DocumentSummary')] };

const json = (schema: unknown) => ({ 'application/json': { schema } });

export function buildOpenApi(config: Config): Record<string, unknown> {
  const { issuer } = config;
  const scopes = {
    'documents:read': 'Read your documents and those shared with you',
    'documents:write': 'Create, change, share and delete documents',
    'documents:admin': 'Every document (only for accounts with the admin role)',
  };
  const fileTypes = config.documents.fileTypes;

  return {
    openapi: '3.1.0',
    info: {
      title: 'Documents API',
      version: '1.0.0',
      description: 'A resource server that accepts only JWT access tokens (RFC 9068) issued by this provider for the '
        + `audience ${config.documents.audience}. Errors are application/problem+json (RFC 9457). A document the caller `
        + 'may not see answers 404, never 403. Request bodies are UTF-8 JSON objects; text that is not valid UTF-8, '
        + 'or JSON strings with lone surrogate escapes ("\\ud800"), are refused with 400, never stored altered.',
    },
    jsonSchemaDialect: 'https://spec.openapis.org/oas/3.1/dialect/base',
    servers: [{ url: `${issuer}/api/v1` }],
    security: [{ bearer: [] }, { dpop: [] }],
    paths: {
      '/documents': {
        get: {
          operationId: 'listDocuments',
          summary: 'Documents the caller owns or that are shared with them (all documents with documents:admin), newest first',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:read'] }],
          parameters: [
            { name: 'limit', in: 'query', description: 'Digits only', schema: { type: 'integer', minimum: LIMITS.pageSize.min, maximum: LIMITS.pageSize.max, default: LIMITS.pageSize.default } },
            { name: 'cursor', in: 'query', description: 'nextCursor from the previous page (opaque)', schema: { type: 'string', maxLength: 64 } },
            { name: 'tag', in: 'query', description: 'Only documents with this tag', schema: tagSchema },
            { name: 'q', in: 'query', description: 'Case-insensitive text the title contains', schema: { ...tagSchema, maxLength: LIMITS.queryLength } },
          ],
          responses: {
            200: { description: 'One page', content: json(ref('DocumentList')) },
            ...problems(400, ...AUTHED),
          },
        },
        post: {
          operationId: 'createDocument',
          summary: 'Create a document owned by the caller',
          description: 'Send an Idempotency-Key to make retrying safe: a retry with the same key and content (by the same '
            + 'caller) creates nothing new and answers as the first request did, even when that answer was lost.',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:write'] }],
          parameters: [{ $ref: '#/components/parameters/IdempotencyKey' }],
          requestBody: { required: true, content: json(ref('DocumentCreate')) },
          responses: {
            201: {
              description: 'Created; for a retry with the Idempotency-Key of a completed request, that request\'s answer: '
                + 'the document as it was created, with the same Location and ETag',
              headers: { Location: headers.Location, ETag: headers.ETag },
              content: json(written),
            },
            ...problems(400, ...AUTHED, 409, 413, 415, 422),
          },
        },
      },
      '/documents/{id}': {
        parameters: [{ $ref: '#/components/parameters/DocumentId' }],
        get: {
          operationId: 'getDocument',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:read'] }],
          parameters: [{ name: 'If-None-Match', in: 'header', schema: { type: 'string' } }],
          responses: {
            200: { description: 'The document', headers: { ETag: headers.ETag }, content: json(ref('Document')) },
            304: { description: 'Not modified since the ETag in If-None-Match', headers: { ETag: headers.ETag } },
            ...problems(400, ...AUTHED, 404),
          },
        },
        patch: {
          operationId: 'updateDocument',
          summary: 'Change title, content and/or tags (owner, editor or admin)',
          description: 'With If-Match, applied only to that version (412 otherwise). Without it, applied to the current '
            + 'version, waiting for concurrent changes to finish: the last writer wins, and 409 is answered only when the '
            + 'document stays busy for seconds.',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:write'] }],
          parameters: [{ $ref: '#/components/parameters/IfMatch' }],
          requestBody: { required: true, content: json(ref('DocumentPatch')) },
          responses: {
            200: { description: 'The updated document', headers: { ETag: headers.ETag }, content: json(written) },
            ...problems(400, ...AUTHED, 404, 409, 412, 413, 415),
          },
        },
        delete: {
          operationId: 'deleteDocument',
          summary: 'Delete the document and its file (owner or admin)',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:write'] }],
          parameters: [{ $ref: '#/components/parameters/IfMatch' }],
          responses: { 204: { description: 'Deleted' }, ...problems(400, ...AUTHED, 404, 409, 412) },
        },
      },
      '/documents/{id}/file': {
        parameters: [{ $ref: '#/components/parameters/DocumentId' }],
        put: {
          operationId: 'putDocumentFile',
          summary: `Store or replace the document's file (at most ${config.documents.maxFileBytes} bytes)`,
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:write'] }],
          parameters: [
            { $ref: '#/components/parameters/IfMatch' },
            {
              name: 'filename', in: 'query', description: 'Name offered when the file is downloaded: no control characters, quotes or slashes',
              schema: { type: 'string', minLength: 1, maxLength: LIMITS.filenameLength, pattern: PATTERNS.filename },
            },
          ],
          requestBody: {
            required: true,
            content: Object.fromEntries(fileTypes.map((type) => [type, { schema: { type: 'string', contentMediaType: type } }])),
          },
          responses: {
            200: { description: 'The document with its new file', headers: { ETag: headers.ETag }, content: json(written) },
            ...problems(400, ...AUTHED, 404, 409, 412, 413, 415),
          },
        },
        get: {
          operationId: 'getDocumentFile',
          summary: 'Download the file, always as an attachment',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:read'] }],
          responses: {
            200: {
              description: 'The file bytes with their stored Content-Type',
              headers: {
                'Content-Disposition': { schema: { type: 'string', pattern: '^attachment; ' } },
                'X-Content-Type-Options': { schema: { const: 'nosniff' } },
                'Repr-Digest': { description: 'SHA-256 of the bytes (RFC 9530)', schema: { type: 'string' } },
              },
              content: Object.fromEntries(fileTypes.map((type) => [type, { schema: { type: 'string', contentMediaType: type } }])),
            },
            ...problems(400, ...AUTHED, 404),
          },
        },
      },
      '/documents/{id}/shares': {
        parameters: [{ $ref: '#/components/parameters/DocumentId' }],
        get: {
          operationId: 'listShares',
          summary: 'Who the document is shared with (owner or admin)',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:read'] }],
          responses: { 200: { description: 'The shares', content: json(ref('ShareList')) }, ...problems(400, ...AUTHED, 404) },
        },
        post: {
          operationId: 'addShare',
          summary: 'Share with an account by email, or change its role (owner or admin). The answer is the same whether or '
            + 'not the email has an account; a share for an email without one takes effect when the account is created.',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:write'] }],
          requestBody: { required: true, content: json(ref('ShareCreate')) },
          responses: {
            201: { description: 'A new share', headers: { Location: headers.Location }, content: json(ref('Share')) },
            200: { description: 'The existing share, with its new role', content: json(ref('Share')) },
            ...problems(400, ...AUTHED, 404, 409, 413, 415),
          },
        },
      },
      '/documents/{id}/shares/{userId}': {
        parameters: [
          { $ref: '#/components/parameters/DocumentId' },
          { name: 'userId', in: 'path', required: true, schema: uuid },
        ],
        delete: {
          operationId: 'removeShare',
          security: [{ bearer: [] }, { dpop: [] }, { oauth2: ['documents:write'] }],
          responses: { 204: { description: 'No longer shared' }, ...problems(400, ...AUTHED, 404, 409) },
        },
      },
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT (RFC 9068, typ at+jwt)' },
        // RFC 9449: a token bound to the client's key (cnf.jkt), sent with a DPoP proof header.
        dpop: { type: 'http', scheme: 'DPoP', description: 'A JWT access token (RFC 9068) bound to the client key by cnf.jkt, with a DPoP proof header' },
        oauth2: {
          type: 'oauth2',
          flows: {
            authorizationCode: { authorizationUrl: `${issuer}/auth`, tokenUrl: `${issuer}/token`, scopes },
            clientCredentials: { tokenUrl: `${issuer}/token`, scopes: { 'documents:read': scopes['documents:read'], 'documents:write': scopes['documents:write'] } },
          },
        },
      },
      parameters: {
        DocumentId: { name: 'id', in: 'path', required: true, schema: documentIdSchema },
        IfMatch: { name: 'If-Match', in: 'header', description: 'Apply only if the document still has this ETag', schema: { type: 'string' } },
        IdempotencyKey: {
          name: 'Idempotency-Key', in: 'header', required: false,
          description: 'Optional; draft-ietf-httpapi-idempotency-key-header. A quoted string (RFC 8941 sf-string) of 1 to 255 '
            + 'printable ASCII characters that is unique to the request, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324" (a random '
            + `UUID is recommended). Keys are the caller's own (per user and client) and are kept for ${KEY_LIFETIME_MS / 3_600_000} `
            + 'hours from the first request; a later request with an expired key is a new request. A retry with the same key '
            + 'and the same content answers as the first request did (201, the same document, Location and ETag) and creates '
            + 'nothing; with different content it answers 422; while the first request is still being processed, 409 with '
            + 'Retry-After. A key that is not a valid sf-string answers 400.',
          schema: { type: 'string', pattern: PATTERNS.idempotencyKey },
        },
      },
      responses: Object.fromEntries(Object.entries(PROBLEM_RESPONSES).map(([status, { description, codes }]) => [
        `Problem${status}`,
        {
          description,
          headers: PROBLEM_HEADERS[status],
          content: {
            'application/problem+json': {
              schema: {
                allOf: [ref('Problem')],
                properties: {
                  status: { const: Number(status) },
                  type: { enum: codes.map(problemType) },
                  title: { enum: codes.map((code) => PROBLEM_TITLES[code]) },
                },
              },
            },
          },
        },
      ])),
      schemas: {
        Owner: {
          type: 'object', additionalProperties: false, required: ['type', 'id'],
          properties: { type: { enum: ['user', 'client'] }, id: { type: 'string' } },
        },
        FileInfo: {
          type: 'object', additionalProperties: false, required: ['contentType', 'size', 'filename', 'sha256', 'uploadedAt'],
          properties: {
            contentType: { type: 'string' },
            size: { type: 'integer', minimum: 0 },
            filename: { type: 'string' },
            sha256: { type: 'string', description: 'Base64 SHA-256 of the bytes' },
            uploadedAt: dateTime,
          },
        },
        DocumentSummary: {
          type: 'object', additionalProperties: false, required: SUMMARY_REQUIRED, properties: summaryProperties,
        },
        Document: {
          type: 'object', additionalProperties: false, required: [...SUMMARY_REQUIRED, 'content'],
          properties: { ...summaryProperties, content: { type: 'string' } },
        },
        DocumentList: {
          type: 'object', additionalProperties: false, required: ['items', 'nextCursor'],
          properties: {
            items: { type: 'array', items: ref('DocumentSummary') },
            nextCursor: { type: ['string', 'null'], description: 'Pass as cursor for the next page; null on the last page' },
          },
        },
        DocumentCreate: {
          type: 'object', additionalProperties: false, required: ['title'],
          properties: { title: titleSchema, content: contentSchema, tags: tagsSchema },
        },
        DocumentPatch: {
          type: 'object', additionalProperties: false, minProperties: 1,
          properties: { title: titleSchema, content: contentSchema, tags: tagsSchema },
        },
        Share: {
          type: 'object', additionalProperties: false, required: ['userId', 'email', 'role', 'createdAt'],
          properties: { userId: uuid, email: { type: 'string', format: 'email' }, role: { enum: ['viewer', 'editor'] }, createdAt: dateTime },
        },
        ShareList: {
          type: 'object', additionalProperties: false, required: ['items'],
          properties: { items: { type: 'array', items: ref('Share') } },
        },
        ShareCreate: {
          type: 'object', additionalProperties: false, required: ['email', 'role'],
          properties: { email: emailSchema, role: { enum: ['viewer', 'editor'] } },
        },
        Problem: {
          type: 'object', required: ['type', 'title', 'status', 'detail'],
          description: 'RFC 9457 problem details',
          properties: {
            type: { type: 'string', format: 'uri' },
            title: { type: 'string' },
            status: { type: 'integer' },
            detail: { type: 'string' },
            errors: {
              type: 'array',
              description: 'For 400s: each offending input, as a JSON pointer into the body ("" for the body as a whole) '
                + 'or the name of the query or path parameter; detail names them too',
              items: {
                type: 'object', additionalProperties: false, required: ['detail'],
                oneOf: [{ required: ['pointer'] }, { required: ['parameter'] }],
                properties: { detail: { type: 'string' }, pointer: { type: 'string' }, parameter: { type: 'string', minLength: 1 } },
              },
            },
          },
          additionalProperties: false,
        },
      },
    },
  };
}
