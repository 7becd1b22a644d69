/**
 * Walks the provider's hosted pages the way a person does (password, code, consent) and says
 * which pages were shown, so suites can assert what was asked, not only where it ended.
 */
import { Browser, readForm } from './browser.ts';
import type { TestServer } from './server.ts';

export type Step = 'login' | 'code' | 'setup' | 'consent';

export interface Journey {
  /** The redirect that left the provider, or the page the walk stopped at. */
  response: Response;
  steps: Step[];
  /** The consent page's text, when one was shown (the last one). */
  consentText?: string;
}

export interface JourneyOptions {
  /** Answers the code page; without it the walk stops there. */
  code?: () => Promise<string>;
  decision?: 'allow' | 'deny';
}

/** The page's text without the per-response CSP nonce, whitespace collapsed. */
export async function pageText(response: Response): Promise<string> {
  return (await response.clone().text()).replace(/nonce="[^"]*"/g, '').replace(/\s+/g, ' ');
}

/** Posts the first form on `page` with `fields` added to its hidden ones, following redirects. */
export async function submit(browser: Browser, server: TestServer, page: Response, fields: Record<string, string>): Promise<Response> {
  const form = readForm(await page.clone().text(), page.url);
  return browser.follow(await browser.post(form.action, { ...form.fields, ...fields }), server.issuer);
}

function stepOf(html: string): Step | undefined {
  if (/action="\/interaction\/[^"/]+\/login"/.test(html)) return 'login';
  if (/action="\/interaction\/[^"/]+\/mfa"/.test(html)) return 'code';
  if (/action="\/interaction\/[^"/]+\/mfa-setup"/.test(html)) return 'setup';
  if (/action="\/interaction\/[^"/]+\/consent"/.test(html)) return 'consent';
  return undefined;
}

/**
 * From `first` (the provider's answer to an authorization request), signs in as `email` and
 * allows consent when asked. Stops at the first response that leaves the provider, at a page it
 * does not know (errors, refusals), at the code page without `options.code`, and at setup.
 */
export async function walk(
  browser: Browser, server: TestServer, first: Response, email: string, password: string, options: JourneyOptions = {},
): Promise<Journey> {
  const steps: Step[] = [];
  let consentText: string | undefined;
  let page = await browser.follow(first, server.issuer);
  for (let hop = 0; hop < 8; hop += 1) {
    if (page.status !== 200) break;
    const step = stepOf(await page.clone().text());
    if (!step) break;
    steps.push(step);
    if (step === 'setup' || (step === 'code' && !options.code)) break;
    // A page asked twice in a row means the answer was refused: leave it to the caller.
    if (steps.length > 1 && steps[steps.length - 2] === step) break;
    if (step === 'login') page = await submit(browser, server, page, { email, password });
    else if (step === 'code') page = await submit(browser, server, page, { code: await options.code!() });
    else {
      consentText = await pageText(page);
      page = await submit(browser, server, page, { decision: options.decision ?? 'allow' });
    }
  }
  return { response: page, steps, ...(consentText === undefined ? {} : { consentText }) };
}
