/**
 * The documents API (a resource server) under /api: thin handlers that validate, call the
 * service and present. Everything under /api answers application/problem+json on error,
 * including unknown paths and methods. Every change is audited by the service, in the same write
 * as the change (audit-outbox.ts); every refused access is audited here.
 */
import Router, { type RouterContext } from '@koa/router';
import compose from 'koa-compose';
import type { Context, Middleware } from 'koa';
import type { AuditLog } from '../audit/log.ts';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import { ROUTED_METHODS, RouteTable, UNKNOWN_PATH_ALLOW } from '../http/methods.ts';
import { cors } from '../security/cors.ts';
import { jsonBody } from './json-body.ts';
import { buildOpenApi } from './openapi.ts';
import { ifNoneMatchSatisfied } from './conditions.ts';
import { tooLarge } from './files.ts';
import { idempotencyKeyOf } from './idempotency.ts';
import { isUnavailable } from '../http/unavailable.ts';
import { ApiProblem } from './problem.ts';
import { etagOf, presentDocument, presentShare, presentSummary } from './presenter.ts';
import {
  createBody, documentId, encodeCursor, fileQuery, LIMITS, listQuery, noQuery, patchBody, queryOf, shareBody, userId, validate,
} from './schema.ts';
import type { DocumentService, RequestInfo, Visible } from './service.ts';
import { bearer, requireScope, type AccessTokenVerifier, type Caller } from './token.ts';
import { DPOP_ALGORITHMS } from './dpop.ts';

export interface DocumentsApiDeps {
  documents: DocumentService;
  verifier: AccessTokenVerifier;
  audit: AuditLog;
  config: Config;
  logger: Logger;
}

const READ = 'documents:read';
const WRITE = 'documents:write';

const caller = (ctx: Context): Caller => ctx.state.caller as Caller;
const ifMatch = (ctx: Context): string | undefined => ctx.get('if-match') || undefined;
const requestInfo = (ctx: Context): RequestInfo => ({ ip: ctx.ip, requestId: (ctx.state.requestId as string | undefined) ?? null });

/** The media type without parameters, lower-cased; text types keep a charset parameter. */
function fileContentType(header: string | undefined, allowed: readonly string[]): string {
  const [essence = '', ...params] = (header ?? '').split(';').map((part) => part.trim());
  const type = essence.toLowerCase();
  if (!allowed.includes(type)) {
    throw new ApiProblem('unsupported-media-type', 415, `Files of type "${type || '(none)'}" are not accepted. Accepted: ${allowed.join(', ')}.`);
  }
  const charset = params.map((p) => /^charset="?([\w.:-]{1,40})"?$/i.exec(p)?.[1]).find(Boolean);
  return type.startsWith('text/') && charset ? `${type}; charset=${charset.toLowerCase()}` : type;
}

/** RFC 6266 attachment disposition with an ASCII fallback name and the exact UTF-8 one. */
function attachment(filename: string): string {
  const ascii = filename.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(filename)}`;
}

function requireJson(ctx: Context): void {
  if (!ctx.is('application/json')) {
    throw new ApiProblem('unsupported-media-type', 415, 'Send the request body as application/json.');
  }
}

export function documentsApi({ documents, verifier, audit, config, logger }: DocumentsApiDeps): Middleware {
  const openapi = JSON.stringify(buildOpenApi(config));

  /** A refused access (changes are audited by the service, with the change). */
  async function recordDenial(ctx: Context, action: string, target: string | null, reason: string): Promise<void> {
    const who = ctx.state.caller as Caller | undefined;
    await audit.record({
      actor: { sub: who?.sub ?? null, clientId: who?.clientId ?? null },
      action, target, outcome: 'denied', reason, ...requestInfo(ctx),
    });
  }

  /**
   * Answers a change with the document as it now is. A token that may write but not read gets
   * the document without its content, which it may not otherwise see.
   */
  function changed(ctx: Context, { doc, access }: Visible): void {
    ctx.set('ETag', etagOf(doc));
    ctx.body = caller(ctx).scopes.has(READ) ? presentDocument(doc, access) : presentSummary(doc, access);
  }

  /** Turns every error under /api into problem+json, and audits refusals. */
  const problems: Middleware = async (ctx, next) => {
    try {
      await next();
      if (ctx.status === 404 && ctx.body == null) throw new ApiProblem('not-found', 404, 'There is no such API resource.');
    } catch (error) {
      let problem: ApiProblem;
      if (error instanceof ApiProblem) {
        problem = error;
      } else {
        // Errors from Koa middleware (body parser: malformed JSON 400, too large 413) carry a status.
        const http = error as { status?: number; expose?: boolean };
        if (http.expose && http.status === 413) problem = new ApiProblem('payload-too-large', 413, 'The request body is too large.');
        else if (http.expose && http.status === 415) problem = new ApiProblem('unsupported-media-type', 415, 'Send the request body as application/json.');
        // Any other client error a parser raised (json-body.ts answers bad JSON itself).
        else if (error instanceof SyntaxError || (http.status && http.status < 500)) problem = new ApiProblem('bad-request', 400, 'The request body is not valid JSON.');
        // The database not answering: the app's error layer answers 503 (src/http/unavailable.ts).
        else if (isUnavailable(error)) throw error;
        else {
          // Anything else is a bug: logged in full, answered with a generic 500.
          logger.error({ err: error, requestId: ctx.state.requestId, path: ctx.path }, 'documents API request failed');
          problem = new ApiProblem('server-error', 500, 'The request could not be completed. Try again later.');
        }
      }
      ctx.status = problem.status;
      ctx.set(problem.headers);
      ctx.set('Cache-Control', 'no-store');
      ctx.type = 'application/problem+json';
      ctx.body = problem.body();
      // Refusals on the API's routes are audited; a path the API does not have is only in the
      // request log, so probing unknown URLs does not fill the audit trail.
      const action = (ctx as Partial<RouterContext>)._matchedRouteName;
      if (action && [401, 403, 404].includes(problem.status)) {
        const target = typeof ctx.params?.id === 'string' ? ctx.params.id : null;
        await recordDenial(ctx, action, target, problem.code);
      }
    }
  };

  const v1 = new Router({ prefix: '/api/v1' });
  v1.use(bearer(verifier));
  // For JSON routes only (file uploads are streamed). 2 MB leaves room for 1 MiB of content with
  // JSON escaping; anything larger is refused before it is parsed.
  const json = jsonBody('2mb');

  v1.post('document.create', '/documents', json, async (ctx) => {
    requireScope(caller(ctx), WRITE);
    validate(noQuery, queryOf(ctx), 'query');
    requireJson(ctx);
    const input = validate(createBody, ctx.request.body, 'body');
    const header = ctx.headers['idempotency-key'];
    const key = idempotencyKeyOf(Array.isArray(header) ? header.join(', ') : header);
    const created = await documents.create(caller(ctx), input, requestInfo(ctx), key);
    changed(ctx, created);
    ctx.status = 201;
    ctx.set('Location', `/api/v1/documents/${created.doc._id}`);
  });

  v1.get('document.list', '/documents', async (ctx) => {
    requireScope(caller(ctx), READ);
    const query = validate(listQuery, queryOf(ctx), 'query');
    const { items, next } = await documents.list(caller(ctx), {
      limit: query.limit ?? LIMITS.pageSize.default, after: query.cursor, tag: query.tag, q: query.q,
    });
    ctx.set('Cache-Control', 'private, no-cache');
    ctx.body = {
      items: items.map(({ doc, access }) => presentSummary(doc, access)),
      nextCursor: next ? encodeCursor(next) : null,
    };
  });

  v1.get('document.read', '/documents/:id', async (ctx) => {
    requireScope(caller(ctx), READ);
    validate(noQuery, queryOf(ctx), 'query');
    const { doc, access } = await documents.get(caller(ctx), validate(documentId, ctx.params.id, 'path', 'id'));
    const etag = etagOf(doc);
    ctx.set('ETag', etag);
    ctx.set('Cache-Control', 'private, no-cache');
    // RFC 9110 13.1.2, evaluated here rather than with ctx.fresh: Koa's check also honours a
    // request's Cache-Control: no-cache, which fetch() adds to every conditional request.
    if (ifNoneMatchSatisfied(ctx.get('if-none-match'), etag)) {
      ctx.status = 304;
      return;
    }
    ctx.body = presentDocument(doc, access);
  });

  v1.patch('document.update', '/documents/:id', json, async (ctx) => {
    requireScope(caller(ctx), WRITE);
    validate(noQuery, queryOf(ctx), 'query');
    const id = validate(documentId, ctx.params.id, 'path', 'id');
    requireJson(ctx);
    const patch = validate(patchBody, ctx.request.body, 'body');
    changed(ctx, await documents.update(caller(ctx), id, patch, ifMatch(ctx), requestInfo(ctx)));
  });

  v1.delete('document.delete', '/documents/:id', async (ctx) => {
    requireScope(caller(ctx), WRITE);
    validate(noQuery, queryOf(ctx), 'query');
    const id = validate(documentId, ctx.params.id, 'path', 'id');
    await documents.delete(caller(ctx), id, ifMatch(ctx), requestInfo(ctx));
    ctx.status = 204;
  });

  v1.put('document.file.upload', '/documents/:id/file', async (ctx) => {
    requireScope(caller(ctx), WRITE);
    const { filename } = validate(fileQuery, queryOf(ctx), 'query');
    const id = validate(documentId, ctx.params.id, 'path', 'id');
    const contentType = fileContentType(ctx.get('content-type') || undefined, config.documents.fileTypes);
    const encoding = ctx.get('content-encoding');
    if (encoding && encoding.toLowerCase() !== 'identity') {
      throw new ApiProblem('unsupported-media-type', 415, 'Upload the file without a Content-Encoding.');
    }
    const declared = ctx.request.length;
    if (declared !== undefined && declared > config.documents.maxFileBytes) throw tooLarge(config.documents.maxFileBytes);
    const upload = { body: ctx.req, contentType, filename: filename ?? `document-${id}` };
    changed(ctx, await documents.putFile(caller(ctx), id, upload, config.documents.maxFileBytes, ifMatch(ctx), requestInfo(ctx)));
  });

  v1.get('document.file.download', '/documents/:id/file', async (ctx) => {
    requireScope(caller(ctx), READ);
    validate(noQuery, queryOf(ctx), 'query');
    const { file, stream } = await documents.openFile(caller(ctx), validate(documentId, ctx.params.id, 'path', 'id'));
    ctx.set({
      'Content-Disposition': attachment(file.filename),
      'X-Content-Type-Options': 'nosniff',
      'Cache-Control': 'private, no-cache',
      'Repr-Digest': `sha-256=:${file.sha256}:`, // RFC 9530
    });
    ctx.type = file.contentType;
    ctx.length = file.size;
    ctx.body = stream;
  });

  v1.get('document.share.list', '/documents/:id/shares', async (ctx) => {
    requireScope(caller(ctx), READ);
    validate(noQuery, queryOf(ctx), 'query');
    const shares = await documents.listShares(caller(ctx), validate(documentId, ctx.params.id, 'path', 'id'));
    ctx.set('Cache-Control', 'private, no-cache');
    ctx.body = { items: shares.map(presentShare) };
  });

  v1.post('document.share.add', '/documents/:id/shares', json, async (ctx) => {
    requireScope(caller(ctx), WRITE);
    validate(noQuery, queryOf(ctx), 'query');
    const id = validate(documentId, ctx.params.id, 'path', 'id');
    requireJson(ctx);
    const { email, role } = validate(shareBody, ctx.request.body, 'body');
    const { share, created } = await documents.addShare(caller(ctx), id, email, role, requestInfo(ctx));
    // 201 for a new share; 200 when an existing one only changed its role.
    ctx.status = created ? 201 : 200;
    if (created) ctx.set('Location', `/api/v1/documents/${id}/shares/${share.userId}`);
    ctx.body = presentShare(share);
  });

  v1.delete('document.share.remove', '/documents/:id/shares/:userId', async (ctx) => {
    requireScope(caller(ctx), WRITE);
    validate(noQuery, queryOf(ctx), 'query');
    const id = validate(documentId, ctx.params.id, 'path', 'id');
    await documents.removeShare(caller(ctx), id, validate(userId, ctx.params.userId, 'path', 'userId'), requestInfo(ctx));
    ctx.status = 204;
  });

  const meta = new Router({ prefix: '/api' });
  meta.get('/openapi.json', (ctx) => {
    ctx.set('Cache-Control', 'public, max-age=300');
    ctx.type = 'application/json';
    ctx.body = openapi;
  });

  const table = new RouteTable().add(meta).add(v1);
  /**
   * 405 with the path's methods in Allow (RFC 9110 15.5.6), for a method a path lacks and for
   * methods no route has (TRACE, PROPFIND, ...), which never reach a handler; a plain OPTIONS
   * (not a CORS preflight) is answered with Allow.
   */
  const methodsOf: Middleware = async (ctx, next) => {
    const routed = (ROUTED_METHODS as readonly string[]).includes(ctx.method);
    if (routed) await next();
    if (routed && (ctx.status !== 404 || ctx.body != null)) return;
    const allowed = table.allowed(ctx.path);
    if (routed && (allowed.length === 0 || (ctx.method !== 'OPTIONS' && allowed.includes(ctx.method)))) return;
    const allow = allowed.join(', ') || UNKNOWN_PATH_ALLOW;
    if (ctx.method === 'OPTIONS') {
      ctx.set('Allow', allow);
      ctx.status = 204;
      return;
    }
    throw new ApiProblem('method-not-allowed', 405, `${ctx.method} is not allowed here. Allowed: ${allow}.`, { headers: { Allow: allow } });
  };

  const api = compose<Context>([
    cors({
      origins: config.documents.corsOrigins,
      methods: ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'],
      allowHeaders: ['Authorization', 'DPoP', 'Content-Type', 'If-Match', 'If-None-Match', 'Idempotency-Key'],
      exposeHeaders: ['ETag', 'Location', 'WWW-Authenticate', 'X-Request-Id', 'Content-Disposition', 'Repr-Digest', 'Allow', 'Retry-After'],
      maxAgeSeconds: 600,
    }),
    async (ctx, next) => {
      ctx.set('Cache-Control', 'no-store');
      await next();
    },
    problems,
    methodsOf,
    meta.routes(),
    v1.routes(),
  ] as Middleware[]);
  // RFC 9728 protected resource metadata, served where clients look for it: the resource
  // identifier's path appended to /.well-known/oauth-protected-resource on the same host.
  const audience = new URL(config.documents.audience);
  const metadataPath = audience.origin === new URL(config.issuer).origin
    ? `/.well-known/oauth-protected-resource${audience.pathname === '/' ? '' : audience.pathname}`
    : undefined;
  const metadata = JSON.stringify({
    resource: config.documents.audience,
    authorization_servers: [config.issuer],
    scopes_supported: ['documents:read', 'documents:write', 'documents:admin'],
    bearer_methods_supported: ['header'],
    // RFC 9449 section 7: DPoP-bound tokens are accepted (with their proofs), bearer tokens too.
    dpop_signing_alg_values_supported: DPOP_ALGORITHMS,
    dpop_bound_access_tokens_required: false,
    resource_documentation: `${config.issuer}/api/openapi.json`,
  });

  // Nothing under /api falls through to the provider: what the API does not serve is a 404 here.
  return async (ctx, next) => {
    if (ctx.path === '/api' || ctx.path.startsWith('/api/')) return api(ctx);
    if (ctx.path === metadataPath) {
      if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
        ctx.set('Allow', 'GET, HEAD');
        ctx.status = 405;
        ctx.type = 'application/problem+json';
        ctx.body = new ApiProblem('method-not-allowed', 405, `${ctx.method} is not allowed here. Allowed: GET, HEAD.`).body();
        return undefined;
      }
      ctx.set({ 'Cache-Control': 'public, max-age=300', 'Access-Control-Allow-Origin': '*' });
      ctx.type = 'application/json';
      ctx.body = metadata;
      return undefined;
    }
    return next();
  };
}
