/**
 * Account e-mails: a subject per template (here, so wording that reaches inboxes is reviewed with
 * the code) and a text and an HTML view per template under views/mail/. Views are compiled once;
 * each message is checked and rendered on its own.
 */
import fs from 'node:fs';
import path from 'node:path';
import ejs from 'ejs';

export type MailTemplate = 'verify-email' | 'reset-password' | 'password-changed' | 'account-exists' | 'mfa-changed';

export interface RenderedMail {
  readonly subject: string;
  readonly text: string;
  readonly html: string;
}

export type Renderer = (template: MailTemplate, data: Readonly<Record<string, unknown>>) => RenderedMail;

interface TemplateSpec {
  subject(data: Readonly<Record<string, unknown>>): string;
  /** A missing field is a caller bug: refusing to send beats mailing a blank where a link belongs. */
  readonly fields: readonly string[];
  /** Fields that end up in href attributes. */
  readonly links: readonly string[];
}

const SPECS: Readonly<Record<MailTemplate, TemplateSpec>> = {
  'verify-email': { subject: () => 'Confirm your email address', fields: ['expiresInHours'], links: ['link'] },
  'reset-password': { subject: () => 'Reset your password', fields: ['expiresInMinutes'], links: ['link'] },
  'password-changed': { subject: () => 'Your password was changed', fields: ['when'], links: ['signInLink'] },
  'account-exists': { subject: () => 'You already have an account', fields: [], links: ['signInLink', 'resetLink'] },
  'mfa-changed': {
    subject: (data) => `Two-step verification was turned ${data.enabled === true ? 'on' : 'off'}`,
    fields: ['enabled', 'when'],
    links: [],
  },
};

/** Text parts are not HTML: escaping would turn a name like "Tom & Jerry" into "Tom &amp; Jerry". */
function plain(value: unknown): string {
  return value == null ? '' : String(value);
}

/** One unambiguous form for every reader, whatever their time zone. */
function formatTime(value: unknown): string {
  const time = new Date(value as string);
  if (Number.isNaN(time.getTime())) throw new TypeError(`mail: expected an ISO time, got ${JSON.stringify(value)}`);
  return time.toUTCString();
}

function compile(dir: string, file: string, escape?: (value: unknown) => string): ejs.TemplateFunction {
  const filename = path.join(dir, file);
  // `filename` lets the views include the shared partials next to them.
  return ejs.compile(fs.readFileSync(filename, 'utf8'), escape ? { filename, escape } : { filename });
}

function isHttpUrl(value: unknown): boolean {
  const url = typeof value === 'string' ? URL.parse(value) : null;
  return url?.protocol === 'https:' || url?.protocol === 'http:';
}

/** A missing field, or a link that is not absolute http(s) (javascript:, data:, a relative path), never reaches a view. */
function check(template: MailTemplate, data: Readonly<Record<string, unknown>>): void {
  const spec = SPECS[template];
  const missing = [...spec.fields, ...spec.links].filter((field) => data[field] == null);
  if (missing.length > 0) throw new TypeError(`mail ${template}: missing ${missing.join(', ')}`);
  const bad = spec.links.filter((field) => !isHttpUrl(data[field]));
  if (bad.length > 0) throw new TypeError(`mail ${template}: expected an absolute http(s) URL in ${bad.join(', ')}`);
}

/** Reads and compiles every view now, so a missing or broken one stops start-up, not a sign-up. */
export function createRenderer(dir: string): Renderer {
  const views = new Map(Object.keys(SPECS).map((template) => [template, {
    text: compile(dir, `${template}.text.ejs`, plain),
    html: compile(dir, `${template}.html.ejs`),
  }]));
  return (template, data) => {
    const view = views.get(template);
    if (!view) throw new TypeError(`mail: unknown template ${JSON.stringify(template)}`);
    check(template, data);
    const subject = SPECS[template].subject(data);
    // `name` is optional: declaring it lets the views test it without a ReferenceError.
    const locals = { name: undefined, ...data, subject, formatTime };
    return { subject, text: view.text(locals), html: view.html(locals) };
  };
}
