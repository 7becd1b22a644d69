/**
 * A minimal browser for end-to-end tests: real HTTP with fetch, a cookie jar, manual redirects,
 * and just enough HTML reading to find forms and their hidden fields.
 */
export interface Form {
  action: string;
  fields: Record<string, string>;
}

export class Browser {
  private readonly cookies = new Map<string, string>();
  private readonly defaultHeaders: Record<string, string>;
  /** Every Set-Cookie header received, as sent, for tests that check cookie attributes. */
  readonly setCookieHeaders: string[] = [];

  /** defaultHeaders go with every request (the benchmark sends X-Forwarded-Proto through them). */
  constructor(defaultHeaders: Record<string, string> = {}) {
    this.defaultHeaders = defaultHeaders;
  }

  private store(response: Response): void {
    for (const header of response.headers.getSetCookie()) {
      this.setCookieHeaders.push(header);
      const [pair, ...attributes] = header.split(';');
      const index = pair!.indexOf('=');
      const name = pair!.slice(0, index).trim();
      const value = pair!.slice(index + 1).trim();
      const expired = attributes.some((a) => /^\s*expires=/i.test(a) && new Date(a.split('=')[1]!).getTime() < Date.now())
        || attributes.some((a) => /^\s*max-age=0\s*$/i.test(a));
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  cookieNames(): string[] {
    return [...this.cookies.keys()];
  }

  async request(url: string | URL, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    for (const [name, value] of Object.entries(this.defaultHeaders)) headers.set(name, value);
    if (this.cookies.size) headers.set('cookie', [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '));
    const response = await fetch(url, { ...init, headers, redirect: 'manual' });
    this.store(response);
    return response;
  }

  get(url: string | URL): Promise<Response> {
    return this.request(url);
  }

  post(url: string | URL, fields: Record<string, string> | string, contentType = 'application/x-www-form-urlencoded'): Promise<Response> {
    const body = typeof fields === 'string' ? fields : new URLSearchParams(fields).toString();
    return this.request(url, { method: 'POST', body, headers: { 'content-type': contentType } });
  }

  /** Follows redirects while they stay on `origin`; returns the first response that does not. */
  async follow(response: Response, origin: string): Promise<Response> {
    let current = response;
    for (let hops = 0; hops < 10; hops += 1) {
      const location = current.headers.get('location');
      if (current.status < 300 || current.status >= 400 || !location) return current;
      const next = new URL(location, current.url || origin);
      if (next.origin !== origin) return current;
      current = await this.get(next);
    }
    throw new Error('too many redirects');
  }
}

function decode(value: string): string {
  return value.replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n)))
    .replace(/&#x([0-9a-f]+);/gi, (_, n: string) => String.fromCharCode(parseInt(n, 16)))
    .replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

/** The first form on the page, with its hidden inputs' values. */
export function readForm(html: string, baseUrl: string): Form {
  const form = /<form\b[^>]*action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/i.exec(html);
  if (!form) throw new Error(`no form on page:\n${html.slice(0, 500)}`);
  const fields: Record<string, string> = {};
  for (const input of form[2]!.matchAll(/<input\b[^>]*>/gi)) {
    const name = /name="([^"]*)"/.exec(input[0])?.[1];
    const value = /value="([^"]*)"/.exec(input[0])?.[1] ?? '';
    if (name && /type="hidden"/.test(input[0])) fields[name] = decode(value);
  }
  return { action: new URL(decode(form[1]!), baseUrl).toString(), fields };
}
