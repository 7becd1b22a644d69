/**
 * Server-rendered pages: `ctx.render(view, locals)` renders views/<view>.ejs with `ctx.state` and
 * the locals, as text/html. Outside development a template is compiled once and kept, and the
 * templates include their partials from the views root (`include('/partials/head')`), which ejs
 * resolves without looking at the disk; koa-views, used before, looked each page up with a stat
 * and ejs checked each relative include with another, on every render.
 */
import path from 'node:path';
import ejs from 'ejs';
import type { Middleware } from 'koa';

export type Render = (view: string, locals?: Record<string, unknown>) => Promise<void>;

declare module 'koa' {
  interface ExtendableContext {
    render: Render;
  }
}

export function views(root: string, options: { cache: boolean }): Middleware {
  return async (ctx, next) => {
    ctx.render = async (view, locals = {}) => {
      const file = path.join(root, `${view}.ejs`);
      const html = await ejs.renderFile(file, { ...ctx.state, ...locals }, { cache: options.cache, root });
      ctx.type = 'text/html';
      ctx.body = html;
    };
    await next();
  };
}
