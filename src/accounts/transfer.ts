/**
 * `user import` and `user export` (README "Importing users"): accounts as JSON lines, one account
 * a line, in one format both ways:
 *   {"id":"…","email":"a@example.com","email_verified":true,"name":"A","given_name":…,
 *    "roles":["admin"],"disabled":false,"created_at":"2024-01-31T12:00:00.000Z",
 *    "password":{"format":"bcrypt","hash":"$2b$10$…"},"totp_secret":"JBSW…"}
 * Only `email` is required. The line describes the account: a profile claim that is absent (or
 * null) is unset, `roles` absent is none, `email_verified` and `disabled` absent are false. An
 * absent `password` or `totp_secret` leaves the account's own as it is. `id` keeps an account's
 * `sub` across systems (an export of this provider has it); without it, accounts are matched by
 * email.
 *
 * Re-running a file changes nothing. A changed line updates its account, but never over what the
 * user has done since: the password is set only while the account has no password of its own
 * (none yet, or the imported hash not yet proven by a sign-in), and the TOTP secret only while the
 * account has none and the import never set one (turning it off, or a reset, stays), or still has
 * the one the import set.
 */
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import mongoose, { type Connection } from 'mongoose';
import { AppError } from '../http/errors.ts';
import { checkImportedPassword } from './imported-hashes.ts';
import { checkTotpSecret } from './mfa.ts';
import { openTotpSecret, sealTotpSecret } from './totp-secrets.ts';
import type { SecretBox } from '../security/secrets.ts';
import { accountModel, type AccountModel, type AccountRecord, type ImportedPassword } from './model.ts';
import { checkProfile, PROFILE_FIELDS, type Profile } from './profile.ts';
import { isValidEmail, normalizeEmail, validRoles, type AccountService } from './service.ts';
import type { AccountTokens } from './tokens.ts';

export interface LineReport {
  line: number;
  status: 'created' | 'updated' | 'unchanged' | 'error';
  email?: string;
  id?: string;
  /** Fields the line changed (updated). */
  changes?: string[];
  /** Fields the line has but the account keeps its own value of (see the module comment). */
  kept?: string[];
  reason?: string;
}

export interface ImportSummary { lines: number; created: number; updated: number; unchanged: number; errors: number }

/** An account as one import line asks for it, checked. */
interface Desired {
  id?: string;
  email: string;
  emailVerified: boolean;
  profile: Profile;
  roles: string[];
  disabled: boolean;
  password?: ImportedPassword;
  totp?: string;
  createdAt?: Date;
}

const MAX_LINE = 64 * 1024;
const LINE_KEYS = new Set(['id', 'email', 'email_verified', ...PROFILE_FIELDS, 'roles', 'disabled', 'created_at', 'password', 'totp_secret']);
/** No "@" (ids and emails share the CLI's argument) and no leading "-" (an option to the CLI). */
const ID = /^[A-Za-z0-9][A-Za-z0-9._:|-]{0,127}$/;

class LineError extends Error {}

const fingerprint = (secret: string) => createHash('sha256').update(secret).digest('hex');
const canonical = (password: ImportedPassword | undefined) =>
  password && JSON.stringify([password.format, password.hash, password.algorithm ?? null, password.iterations ?? null, password.salt ?? null]);

function optional<T>(fields: Record<string, unknown>, key: string, type: string, check: (value: unknown) => value is T): T | undefined {
  const value = fields[key];
  if (value === undefined || value === null) return undefined;
  if (!check(value)) throw new LineError(`${key} must be ${type}`);
  return value;
}
const isString = (v: unknown): v is string => typeof v === 'string';
const isBoolean = (v: unknown): v is boolean => typeof v === 'boolean';
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every(isString);

/** Reads and checks one line; throws LineError with a reason that never quotes a hash or secret. */
async function desiredOf(fields: Record<string, unknown>): Promise<Desired> {
  const unknown = Object.keys(fields).find((key) => !LINE_KEYS.has(key));
  if (unknown !== undefined) throw new LineError(`unknown field "${unknown.slice(0, 40)}"`);
  const id = optional(fields, 'id', 'a string', isString);
  if (id !== undefined && !ID.test(id)) throw new LineError(`id must match ${ID.source}`);
  const rawEmail = optional(fields, 'email', 'a string', isString);
  const email = normalizeEmail(rawEmail ?? '');
  if (!isValidEmail(email)) throw new LineError(rawEmail === undefined ? 'email is required' : 'email is not a valid address');
  const checked = checkProfile(Object.fromEntries(PROFILE_FIELDS.map((field) => [field, optional(fields, field, 'a string', isString) ?? ''])));
  if (checked.problems.length) throw new LineError(checked.problems.join(' '));
  let roles: string[];
  try {
    roles = validRoles(optional(fields, 'roles', 'an array of strings', isStrings) ?? []);
  } catch (error) {
    throw new LineError((error as Error).message);
  }
  const desired: Desired = {
    email, emailVerified: optional(fields, 'email_verified', 'true or false', isBoolean) ?? false, profile: checked.set, roles,
    disabled: optional(fields, 'disabled', 'true or false', isBoolean) ?? false, ...(id ? { id } : {}),
  };
  const createdAt = optional(fields, 'created_at', 'an ISO 8601 time', isString);
  if (createdAt !== undefined) {
    desired.createdAt = new Date(createdAt);
    if (Number.isNaN(desired.createdAt.getTime())) throw new LineError('created_at must be an ISO 8601 time');
  }
  if (fields.password !== undefined && fields.password !== null) {
    const password = checkImportedPassword(fields.password);
    if ('problem' in password) throw new LineError(password.problem);
    desired.password = password.password;
  }
  const totp = optional(fields, 'totp_secret', 'a string', isString);
  if (totp !== undefined) {
    const secret = await checkTotpSecret(totp);
    if ('problem' in secret) throw new LineError(secret.problem);
    desired.totp = secret.secret;
  }
  return desired;
}

const isDuplicateKey = (error: unknown) => error instanceof mongoose.mongo.MongoServerError && error.code === 11000;

export class AccountTransfer {
  /** TOTP secrets are stored sealed (mfa.ts); lines carry them in the clear. */
  private readonly secrets: SecretBox;
  private readonly accounts: AccountModel;
  private readonly service: AccountService;
  private readonly tokens: AccountTokens;

  constructor(connection: Connection, service: AccountService, tokens: AccountTokens, secrets: SecretBox) {
    this.secrets = secrets;
    this.accounts = accountModel(connection);
    this.service = service;
    this.tokens = tokens;
  }

  /**
   * Imports every line of `input`, yielding a report per non-blank line as it goes. A bad line is
   * reported and skipped; a database failure (anything but a refused write) ends the import.
   */
  async *import(input: Readable, summary: ImportSummary): AsyncGenerator<LineReport> {
    const seen = new Map<string, number>();
    let number = 0;
    for await (const text of createInterface({ input, crlfDelay: Infinity })) {
      number += 1;
      if (!text.trim()) continue;
      summary.lines += 1;
      const report = await this.importLine(number, text, seen);
      if (report.status === 'error') summary.errors += 1;
      else summary[report.status] += 1;
      yield report;
    }
  }

  private async importLine(line: number, text: string, seen: Map<string, number>): Promise<LineReport> {
    let email: string | undefined;
    try {
      if (text.length > MAX_LINE) throw new LineError(`line is longer than ${MAX_LINE} characters`);
      let fields: unknown;
      try {
        fields = JSON.parse(text);
      } catch {
        throw new LineError('not valid JSON'); // JSON.parse's message quotes the line
      }
      if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) throw new LineError('a line must be a JSON object');
      const desired = await desiredOf(fields as Record<string, unknown>);
      email = desired.email;
      for (const key of [`email:${desired.email}`, ...(desired.id ? [`id:${desired.id}`] : [])]) {
        const earlier = seen.get(key);
        if (earlier !== undefined) throw new LineError(`the same account is on line ${earlier}`);
        seen.set(key, line);
      }
      return { line, email, ...(await this.apply(desired)) };
    } catch (error) {
      if (error instanceof LineError || error instanceof AppError) return { line, status: 'error', ...(email ? { email } : {}), reason: error.message };
      throw error;
    }
  }

  private async apply(desired: Desired): Promise<Omit<LineReport, 'line' | 'email'>> {
    // By the key it was imported under first: an account whose email changed since is still found.
    const existing = desired.id
      ? await this.accounts.findById(desired.id).lean()
      : await this.accounts.findOne({ 'imported.source': desired.email }).lean() ?? await this.accounts.findOne({ email: desired.email }).lean();
    if (existing?.deletingAt) throw new LineError('the account is being deleted');
    if (!existing && desired.id && (await this.accounts.exists({ email: desired.email }))) {
      throw new LineError('another account (with another id) has this email');
    }
    return existing ? this.update(existing, desired) : this.create(desired);
  }

  private async create(desired: Desired): Promise<Omit<LineReport, 'line' | 'email'>> {
    const at = new Date();
    try {
      const [record] = await this.accounts.create([{
        ...(desired.id ? { _id: desired.id } : {}),
        email: desired.email, ...desired.profile, emailVerified: desired.emailVerified, roles: desired.roles, disabled: desired.disabled,
        ...(desired.password ? { importedPassword: desired.password } : {}),
        ...(desired.totp ? { mfa: { secret: sealTotpSecret(this.secrets, desired.totp), enabledAt: at, recoveryCodeHashes: [] } } : {}),
        imported: { at, ...(desired.totp ? { totp: fingerprint(desired.totp) } : {}), source: desired.id ?? desired.email, values: valuesOf(desired) },
        ...(desired.createdAt ? { createdAt: desired.createdAt } : {}),
      }]);
      if (desired.emailVerified) await this.service.changedElsewhere(record!._id, { verified: true });
      return { status: 'created', id: record!._id };
    } catch (error) {
      if (isDuplicateKey(error)) throw new LineError('another account has this email or id');
      throw error;
    }
  }

  private async update(existing: AccountRecord, desired: Desired): Promise<Omit<LineReport, 'line' | 'email'>> {
    const $set: Record<string, unknown> = {};
    const $unset: Record<string, 1> = {};
    const changes: string[] = [];
    const kept: string[] = [];
    const change = (field: string, path: string, value: unknown) => {
      changes.push(field);
      if (value === undefined) $unset[path] = 1;
      else $set[path] = value;
    };
    // A field is set again only while it still holds what the last import set: a change made since
    // (by the user, an administrator, a verification) is kept. On an account no import has marked
    // yet, the line applies, except that it never un-verifies an address or re-enables an account.
    const last = existing.imported?.values;
    const current = valuesOf({ ...existing, profile: existing, roles: [...existing.roles] });
    const wanted = valuesOf(desired);
    const field = (name: string, path: string, value: unknown, mayApply: boolean) => {
      if (current[name] === wanted[name]) return;
      const untouched = last ? last[name] === current[name] : mayApply;
      if (untouched) change(name, path, value);
      else kept.push(name);
    };
    field('email', 'email', desired.email, true);
    field('email_verified', 'emailVerified', desired.emailVerified, desired.emailVerified || !existing.emailVerified);
    for (const name of PROFILE_FIELDS) field(name, name, desired.profile[name], true);
    field('roles', 'roles', desired.roles, true);
    field('disabled', 'disabled', desired.disabled, desired.disabled || !existing.disabled);

    if (desired.password && existing.passwordHash) kept.push('password');
    else if (desired.password && canonical(existing.importedPassword) !== canonical(desired.password)) change('password', 'importedPassword', desired.password);

    let totpMark = existing.imported?.totp;
    const existingTotp = existing.mfa ? openTotpSecret(this.secrets, existing.mfa.secret) : undefined;
    if (desired.totp && existingTotp !== desired.totp) {
      const stillImported = existingTotp !== undefined ? existing.imported?.totp === fingerprint(existingTotp) : !existing.imported?.totp;
      if (!stillImported) kept.push('totp_secret');
      else {
        change('totp_secret', 'mfa', { secret: sealTotpSecret(this.secrets, desired.totp), enabledAt: new Date(), recoveryCodeHashes: [] });
        totpMark = fingerprint(desired.totp);
      }
    }
    if (!changes.length) return { status: 'unchanged', id: existing._id, ...(kept.length ? { kept } : {}) };

    $set.imported = {
      at: new Date(), ...(totpMark ? { totp: totpMark } : {}), source: existing.imported?.source ?? desired.id ?? desired.email, values: wanted,
    };
    try {
      await this.accounts.updateOne({ _id: existing._id }, { $set, ...(Object.keys($unset).length ? { $unset } : {}) });
    } catch (error) {
      if (isDuplicateKey(error)) throw new LineError('another account has this email');
      throw error;
    }
    // Links mailed to the old address must not work for the new one.
    if (changes.includes('email')) {
      await Promise.all([this.tokens.revokeAll('verify-email', existing._id), this.tokens.revokeAll('reset-password', existing._id)]);
    }
    // What the account service does after its own changes of these (setDisabled, setRoles, verification).
    const signOut = (desired.disabled && !existing.disabled) || existing.roles.some((role) => !desired.roles.includes(role));
    const verified = desired.emailVerified && (changes.includes('email') || changes.includes('email_verified'));
    await this.service.changedElsewhere(existing._id, { signOut, verified });
    return { status: 'updated', id: existing._id, changes, ...(kept.length ? { kept } : {}) };
  }

  /**
   * Every account (but those being deleted) as an import line, oldest first. Password hashes and
   * TOTP secrets only `withSecrets`: the argon2id hash as format argon2, or the imported hash not
   * yet replaced, as it was imported. Recovery codes are never exported.
   */
  async *export(withSecrets: boolean): AsyncGenerator<Record<string, unknown>> {
    const cursor = this.accounts.find({ deletingAt: mongoose.trusted({ $exists: false }) }).sort({ createdAt: 1, _id: 1 }).lean().cursor();
    for await (const record of cursor as AsyncIterable<AccountRecord>) {
      const profile = Object.fromEntries(PROFILE_FIELDS.flatMap((field) => (record[field] ? [[field, record[field]]] : [])));
      const imported = record.importedPassword;
      const password = record.passwordHash ? { format: 'argon2', hash: record.passwordHash }
        : imported ? Object.fromEntries(Object.entries(imported).filter(([, value]) => value !== undefined && value !== null)) : undefined;
      yield {
        id: record._id, email: record.email, email_verified: record.emailVerified, ...profile, roles: record.roles,
        disabled: record.disabled, created_at: record.createdAt.toISOString(),
        ...(withSecrets && password ? { password } : {}),
        ...(withSecrets && record.mfa ? { totp_secret: openTotpSecret(this.secrets, record.mfa.secret) } : {}),
      };
    }
  }
}

/** What an import line sets, field by field, as SHA-256 (hex) of its JSON: compared, never shown. */
function valuesOf(account: Pick<Desired, 'email' | 'emailVerified' | 'roles' | 'disabled'> & { profile: Partial<Profile> }): Record<string, string> {
  const digest = (value: unknown) => createHash('sha256').update(JSON.stringify(value ?? null)).digest('hex');
  return {
    email: digest(account.email), email_verified: digest(account.emailVerified), roles: digest([...account.roles].sort()), disabled: digest(account.disabled),
    ...Object.fromEntries(PROFILE_FIELDS.map((name) => [name, digest(account.profile[name])])),
  };
}
