/**
 * The answers nobody else gives: the issuer's home page, and a styled page (or problem+json for
 * clients that ask for JSON) wherever a request would otherwise end in Koa's bare text.
 *
 * oidc-provider, mounted last, calls next() for any path or method its router lacks, so those
 * requests come back here as a 404 without a body. Its endpoints' own errors (OAuth JSON, or
 * renderError pages) always carry a body and pass through untouched.
 */
import Router from '@koa/router';
import type { Context, Middleware } from 'koa';
import { ROUTED_METHODS, UNKNOWN_PATH_ALLOW, type RouteTable } from './methods.ts';

const PHRASES: Record<number, string> = {
  400: 'Bad Request', 404: 'Not Found', 405: 'Method Not Allowed', 413: 'Content Too Large', 415: 'Unsupported Media Type',
  429: 'Too Many Requests', 500: 'Internal Server Error', 503: 'Service Unavailable',
};

export function wantsJson(ctx: Context): boolean {
  const preferred = ctx.accepts('html', 'json', 'application/problem+json');
  return preferred === 'json' || preferred === 'application/problem+json';
}

export interface ErrorAnswer {
  status: number;
  /** Shown to the user: never internal detail. */
  message: string;
  heading?: string;
  code?: string | null;
}

/** Answers an error as an RFC 9457 problem for JSON clients and as the error page for browsers. */
export async function answerError(ctx: Context, { status, message, heading, code = null }: ErrorAnswer): Promise<void> {
  ctx.status = status;
  if (wantsJson(ctx)) {
    ctx.type = 'application/problem+json';
    ctx.body = { type: 'about:blank', title: PHRASES[status] ?? (status >= 500 ? 'Server Error' : 'Client Error'), status, detail: message };
    return;
  }
  const title = PHRASES[status] ?? 'Error';
  await ctx.render('error', {
    title,
    heading: heading ?? (status >= 500 ? 'Something went wrong' : 'We could not do that'),
    message, code, homeLink: status === 404 || status === 405,
  });
  // Rendering sets 200; the status is the point of the page.
  ctx.status = status;
}

async function notAllowed(ctx: Context, allow: string): Promise<void> {
  ctx.set('Allow', allow);
  await answerError(ctx, { status: 405, heading: 'Not available here', message: `This address does not accept ${ctx.method} requests.` });
}

/**
 * Put after the error handler and before every router. Methods no route uses (TRACE, PROPFIND,
 * ...) are refused before any handler runs; a request no route answered becomes a 404 page, or a
 * 405 with the path's methods in Allow when the path exists with other methods.
 */
export function finalAnswers(routes: RouteTable): Middleware {
  return async (ctx, next) => {
    if (!(ROUTED_METHODS as readonly string[]).includes(ctx.method)) {
      return notAllowed(ctx, routes.allowed(ctx.path).join(', ') || UNKNOWN_PATH_ALLOW);
    }
    await next();
    if (ctx.body != null || ![404, 405, 501].includes(ctx.status)) return;
    // A 405 from a router that knows the path's methods keeps its Allow (the documents API's
    // metadata document, for one); @koa/router's own 501/405 only see that router's routes.
    const allowed = routes.allowed(ctx.path);
    const given = ctx.status === 405 ? ctx.response.get('Allow') : '';
    if (allowed.length === 0 && !given) {
      await answerError(ctx, { status: 404, heading: 'Page not found', message: 'There is nothing at this address. Check the link, or start from the home page.' });
    } else if (ctx.method === 'OPTIONS') {
      ctx.set('Allow', allowed.length ? allowed.join(', ') : given);
      ctx.status = 204;
    } else if (allowed.includes(ctx.method)) {
      // The route exists for this method and answered 404 itself without a body.
      await answerError(ctx, { status: 404, heading: 'Page not found', message: 'There is nothing at this address.' });
    } else {
      await notAllowed(ctx, allowed.length ? allowed.join(', ') : given);
    }
    return undefined;
  };
}

/** The issuer's root: what this service is, where people manage their account, and discovery. */
/**
 * The icon browsers ask every page's origin for: without one, each page load logs a failed request
 * in the console. A lock in the pages' accent colour, as SVG (img-src 'self' allows it).
 */
const ICON = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect x="6" y="14" width="20" height="15" rx="3" fill="#2557d6"/>'
  + '<path d="M10 14v-4a6 6 0 0 1 12 0v4" fill="none" stroke="#2557d6" stroke-width="3"/><circle cx="16" cy="21" r="2.5" fill="#fff"/></svg>';

export function homePage(issuer: string): Router {
  const router = new Router();
  router.get(['/favicon.ico', '/favicon.svg'], (ctx) => {
    ctx.type = 'image/svg+xml';
    ctx.set('Cache-Control', 'public, max-age=86400');
    ctx.body = ICON;
  });
  router.get('/', async (ctx) => {
    ctx.set('Cache-Control', 'no-cache');
    await ctx.render('home', { title: 'Sign-in service', heading: 'Sign-in service', discoveryUrl: `${issuer}/.well-known/openid-configuration` });
  });
  return router;
}
