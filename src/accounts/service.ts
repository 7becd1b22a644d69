import mongoose from 'mongoose';
import type { Account, AccountClaims } from 'oidc-provider';
import { AppError } from '../http/errors.ts';
import { passwordProblems, type PasswordOwner, type PasswordPolicy } from '../security/password-policy.ts';
import { accountModel, type AccountModel, type AccountRecord } from './model.ts';
import { PASSWORD_MAX_LENGTH, type PasswordHasher } from './password.ts';
import { checkStoredPassword } from './imported-hashes.ts';
import { sendVerificationLink, type VerificationMail } from './verification-mail.ts';
import { checkProfile, PROFILE_FIELDS, type Profile, type ProfileChanges, type ProfileField } from './profile.ts';
import type { Connection } from 'mongoose';
import { requestMemo } from '../http/request-memo.ts';

/**
 * A plain address: dot-atom local part and a host name. Deliberately stricter than RFC 5322
 * (no quoted parts, comments, commas or angle brackets), so what is stored is exactly where mail
 * goes: a mail library reads "a@x.com,b@y.com" or "z<b@y.com>" as other recipients.
 */
const EMAIL = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$/;

export function isValidEmail(email: string): boolean {
  return email.length <= 254 && email.split('@')[0]!.length <= 64 && EMAIL.test(email);
}
const ROLE = /^[a-z][a-z0-9_.:-]{0,63}$/;

export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

export interface NewAccount {
  email: string;
  password: string;
  name?: string | undefined;
  emailVerified?: boolean;
  roles?: string[];
}

export interface PasswordOptions {
  /**
   * Skips the policy (strength, email in the password) but not the 8 to 128 character floor: for
   * an administrator who knows why. The caller audits it.
   */
  allowWeakPassword?: boolean | undefined;
}

/** What callers outside this module see of an account: never the hash. Unset claims are null. */
export type AccountView = {
  id: string;
  email: string;
  email_verified: boolean;
  roles: string[];
  disabled: boolean;
  created_at: string;
  updated_at: string;
} & Record<ProfileField, string | null>;

/** A profile change that was refused; `problems` are sentences for the page, one per field. */
export class ProfileError extends AppError {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super('invalid_profile', problems.join(' '), 400);
    this.problems = problems;
  }
}

function view(record: AccountRecord): AccountView {
  return {
    id: record._id,
    email: record.email,
    ...Object.fromEntries(PROFILE_FIELDS.map((field) => [field, record[field] ?? null])) as Record<ProfileField, string | null>,
    email_verified: record.emailVerified,
    roles: record.roles,
    disabled: record.disabled,
    created_at: record.createdAt.toISOString(),
    updated_at: record.updatedAt.toISOString(),
  };
}

/** How an account's password is kept, for administrators (never the hash). */
export type PasswordState = { set: true } | { set: false; imported: string | null };

/** Roles as stored: unique, each matching ROLE; throws invalid_role otherwise. */
export function validRoles(roles: readonly string[]): string[] {
  const unique = [...new Set(roles)];
  const badRole = unique.find((r) => !ROLE.test(r));
  if (badRole !== undefined) throw new AppError('invalid_role', `role "${badRole}" must match ${ROLE.source}`);
  return unique;
}

function validProfile(changes: ProfileChanges): ReturnType<typeof checkProfile> {
  const checked = checkProfile(changes);
  if (checked.problems.length) throw new ProfileError(checked.problems);
  return checked;
}

function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 11000;
}

export class AccountService {
  private readonly accounts: AccountModel;
  private readonly hasher: PasswordHasher;
  private readonly endEverything: (accountId: string) => Promise<void>;
  private readonly verifiedListeners: ((account: AccountView) => Promise<void>)[] = [];
  /** The rule for every new password, whoever sets it (pages, CLI). */
  readonly passwordPolicy: PasswordPolicy;

  /** signOutEverywhere ends an account's sessions and revokes its grants and tokens. */
  constructor(connection: Connection, hasher: PasswordHasher, signOutEverywhere: (accountId: string) => Promise<void>, policy: PasswordPolicy) {
    this.accounts = accountModel(connection);
    this.hasher = hasher;
    this.endEverything = signOutEverywhere;
    this.passwordPolicy = policy;
  }

  /**
   * Runs when an account's address becomes proven: created verified, or verified later. Other
   * modules (document shares waiting for that address) react without accounts knowing them.
   */
  onEmailVerified(listener: (account: AccountView) => Promise<void>): void {
    this.verifiedListeners.push(listener);
  }

  private async emailVerified(account: AccountView): Promise<void> {
    for (const listener of this.verifiedListeners) await listener(account);
  }

  async ensureIndexes(): Promise<void> {
    await this.accounts.createIndexes();
  }

  /** What is wrong with a new password for this owner under the policy; empty when it is fine. */
  passwordProblems(password: string, owner: PasswordOwner): string[] {
    return passwordProblems(password, owner, this.passwordPolicy);
  }

  private validatePassword(password: string, owner: PasswordOwner, options: PasswordOptions): void {
    if (password.length < 8 || password.length > PASSWORD_MAX_LENGTH) {
      throw new AppError('invalid_password', `password must be 8 to ${PASSWORD_MAX_LENGTH} characters`);
    }
    if (options.allowWeakPassword) return;
    const problems = this.passwordProblems(password, owner);
    if (problems.length) throw new AppError('weak_password', `password refused: ${problems.join(' ')}`);
  }

  async create(input: NewAccount, options: PasswordOptions = {}): Promise<AccountView> {
    const email = normalizeEmail(input.email);
    if (!isValidEmail(email)) throw new AppError('invalid_email', 'email is not a valid address');
    const profile = validProfile({ name: input.name ?? '' }).set;
    this.validatePassword(input.password, { email, name: profile.name }, options);
    const roles = validRoles(input.roles ?? []);
    const passwordHash = await this.hasher.hash(input.password);
    return this.insert({ email, passwordHash, profile, emailVerified: input.emailVerified ?? false, roles });
  }

  private async insert(input: { email: string; passwordHash: string; profile: Profile; emailVerified: boolean; roles: string[] }): Promise<AccountView> {
    const { email, passwordHash, roles } = input;
    try {
      const record = await this.accounts.create({
        email,
        passwordHash,
        ...input.profile,
        emailVerified: input.emailVerified,
        roles,
      });
      const account = view(record.toObject());
      if (account.email_verified) await this.emailVerified(account);
      return account;
    } catch (error) {
      if (isDuplicateKey(error)) throw new AppError('email_taken', 'an account with this email already exists', 409);
      throw error;
    }
  }

  /**
   * First half of self-service registration: the password's hash for a new address, or the
   * existing account. The same argon2 work is done either way, so timing does not tell them
   * apart. No account is created here: that waits for the mailed link (createRegistered), so an
   * address cannot be taken by someone who does not receive its mail.
   */
  async prepareRegistration(email: string, password: string): Promise<{ existing: AccountView } | { passwordHash: string }> {
    const existing = await this.get(email);
    const passwordHash = await this.hasher.hash(password);
    return existing ? { existing } : { passwordHash };
  }

  /** Second half: the link was followed, so the address is proven. email_taken if it has an account by now. */
  async createRegistered(input: { email: string; name: string; passwordHash: string }): Promise<AccountView> {
    const { email, passwordHash } = input;
    return this.insert({ email, passwordHash, profile: validProfile({ name: input.name }).set, emailVerified: true, roles: [] });
  }

  /**
   * Sets the given profile claims (an empty string clears one; absent ones stay). Throws a
   * ProfileError listing every refused value, and then changes nothing.
   */
  async updateProfile(idOrEmail: string, changes: ProfileChanges): Promise<AccountView> {
    const { id } = await this.require(idOrEmail);
    const { set, clear } = validProfile(changes);
    const unset = Object.fromEntries(clear.map((field) => [field, 1]));
    // The schema's timestamps move updatedAt too, so the updated_at claim says when it last changed.
    await this.accounts.updateOne({ _id: id }, { $set: set, ...(clear.length ? { $unset: unset } : {}) });
    return this.require(id);
  }

  /**
   * Gives the account a new address, unverified until the link mailed to it is followed; links
   * mailed to the old address (verification, password reset) stop working. email_taken (409) when
   * another account has it; `changed` is false when it is the account's address already.
   */
  async changeEmail(idOrEmail: string, newEmail: string, mail: VerificationMail): Promise<{ account: AccountView; changed: boolean }> {
    const current = await this.require(idOrEmail);
    const email = normalizeEmail(newEmail);
    if (!isValidEmail(email)) throw new AppError('invalid_email', 'email is not a valid address');
    if (email === current.email) return { account: current, changed: false };
    try {
      await this.accounts.updateOne({ _id: current.id }, { email, emailVerified: false });
    } catch (error) {
      if (isDuplicateKey(error)) throw new AppError('email_taken', 'an account with this email already exists', 409);
      throw error;
    }
    await mail.tokens.revokeAll('reset-password', current.id);
    const account = await this.require(current.id);
    await sendVerificationLink(mail, account);
    return { account, changed: true };
  }

  /** Whether `password` is the account's current password (same argon2 cost either way). */
  async checkPassword(id: string, password: string): Promise<boolean> {
    const record = await this.accounts.findOne({ _id: id, disabled: false }).lean();
    const { valid, replacement } = await checkStoredPassword(this.hasher, record, password);
    if (record && replacement) await this.adoptImported(record._id, record.importedPassword, replacement);
    return record !== null && valid;
  }

  /**
   * An imported hash matched: store its argon2id replacement and drop it. Only while no password
   * has been set meanwhile (an administrator's or a reset's wins).
   */
  private async adoptImported(id: string, verified: { hash: string } | undefined, passwordHash: string): Promise<void> {
    // The very hash that was verified: a re-import with another one meanwhile is not replaced.
    await this.accounts.updateOne(
      { _id: id, passwordHash: mongoose.trusted({ $exists: false }), 'importedPassword.hash': verified?.hash },
      { $set: { passwordHash }, $unset: { importedPassword: 1 } },
      { timestamps: false },
    );
  }

  /**
   * For writes to accounts made outside this class (the user import, transfer.ts): what this
   * class does after its own, signing the account out everywhere or announcing a proven address.
   */
  async changedElsewhere(id: string, what: { signOut?: boolean; verified?: boolean }): Promise<void> {
    if (what.signOut) await this.endEverything(id);
    const account = what.verified ? await this.get(id) : undefined;
    if (account?.email_verified) await this.emailVerified(account);
  }

  async passwordState(id: string): Promise<PasswordState> {
    const record = await this.accounts.findById(id, { passwordHash: 1, 'importedPassword.format': 1 }).lean();
    return record?.passwordHash ? { set: true } : { set: false, imported: record?.importedPassword?.format ?? null };
  }

  /** Ends every session of the account and revokes its grants and tokens. */
  async signOutEverywhere(id: string): Promise<void> {
    await this.endEverything(id);
  }

  /** Marks the address verified, if it is still the account's address (the link proves that one). */
  async markEmailVerified(id: string, email: string): Promise<boolean> {
    const { matchedCount } = await this.accounts.updateOne({ _id: id, email }, { emailVerified: true });
    if (matchedCount === 1) await this.emailVerified(await this.require(id));
    return matchedCount === 1;
  }

  /**
   * Password sign-in. Returns the account id, or undefined for every kind of failure (unknown
   * email, wrong password, disabled account) after the same amount of argon2 work, so neither the
   * answer nor its timing tells whether an email is registered.
   */
  async authenticate(email: string, password: string): Promise<string | undefined> {
    return (await this.signIn(email, password))?.id;
  }

  /**
   * Checks a password and tells the login page what it decides next (verified email, second
   * step) from the same read, so a sign-in reads the account once.
   */
  async signIn(email: string, password: string): Promise<{ id: string; emailVerified: boolean; mfaEnabled: boolean } | undefined> {
    const record = await this.accounts.findOne({ email: normalizeEmail(email) }).lean();
    const { valid, replacement } = await checkStoredPassword(this.hasher, record, password);
    if (!record || !valid || record.disabled) return undefined;
    // Imported hashes (imported-hashes.ts) are replaced at the first sign-in that proves them.
    if (replacement) await this.adoptImported(record._id, record.importedPassword, replacement);
    else if (this.hasher.needsRehash(record.passwordHash!)) {
      // Only the hash just verified is replaced: a reset landing meanwhile keeps its password.
      await this.accounts.updateOne({ _id: record._id, passwordHash: record.passwordHash }, { passwordHash: await this.hasher.hash(password) });
    }
    return { id: record._id, emailVerified: record.emailVerified, mfaEnabled: Boolean(record.mfa) };
  }

  async get(idOrEmail: string): Promise<AccountView | undefined> {
    const query = idOrEmail.includes('@') ? { email: normalizeEmail(idOrEmail) } : { _id: idOrEmail };
    const record = await this.accounts.findOne(query).lean();
    return record ? view(record) : undefined;
  }

  private async require(idOrEmail: string): Promise<AccountView> {
    const account = await this.get(idOrEmail);
    if (!account) throw new AppError('account_not_found', 'no such account', 404);
    return account;
  }

  async list(): Promise<AccountView[]> {
    const records = await this.accounts.find().sort({ createdAt: 1 }).lean();
    return records.map(view);
  }

  async setDisabled(idOrEmail: string, disabled: boolean): Promise<AccountView> {
    const { id } = await this.require(idOrEmail);
    // An account half erased (erase.ts) stays disabled until `user delete` finishes it.
    const filter = disabled ? { _id: id } : { _id: id, deletingAt: mongoose.trusted({ $exists: false }) };
    const { matchedCount } = await this.accounts.updateOne(filter, { disabled });
    if (matchedCount === 0) throw new AppError('account_deleting', 'the account is being deleted: run `user delete` again to finish', 409);
    // Re-enabling must not bring back what was issued before the account was disabled.
    if (disabled) await this.endEverything(id);
    return this.require(id);
  }

  async setPassword(idOrEmail: string, password: string, options: PasswordOptions = {}): Promise<AccountView> {
    const { id, email, name } = await this.require(idOrEmail);
    this.validatePassword(password, { email, name }, options);
    await this.accounts.updateOne({ _id: id }, { $set: { passwordHash: await this.hasher.hash(password) }, $unset: { importedPassword: 1 } });
    // A password is reset because the old one may be known: end what it may have opened.
    await this.endEverything(id);
    return this.require(id);
  }

  async hasRole(id: string, role: string): Promise<boolean> {
    return (await this.enabledRecord(id))?.roles.includes(role) ?? false;
  }

  /**
   * An enabled account as oidc-provider sees it, read once per request: a token request for the
   * documents API asks for the account's claims and for its roles (requestMemo is per request).
   */
  private async enabledRecord(id: string): Promise<AccountRecord | null> {
    const memo = requestMemo();
    const key = `account\u0000${id}`;
    const known = memo?.get<AccountRecord>(key);
    if (known !== undefined) return known;
    const readAt = memo?.generation;
    const record = await this.accounts.findOne({ _id: id, disabled: false }).lean<AccountRecord>();
    memo?.set(key, record, readAt);
    return record;
  }

  /**
   * Replaces the account's roles. Taking a role away also signs the account out everywhere, so
   * nothing issued while it held the role (a documents:admin grant, say) can be refreshed.
   */
  async setRoles(idOrEmail: string, roles: readonly string[]): Promise<AccountView> {
    const current = await this.require(idOrEmail);
    const next = validRoles(roles);
    await this.accounts.updateOne({ _id: current.id }, { roles: next });
    if (current.roles.some((role) => !next.includes(role))) await this.endEverything(current.id);
    return this.require(current.id);
  }

  /** oidc-provider's findAccount: disabled accounts are invisible, which also stops their refresh tokens. */
  async findAccount(id: string): Promise<Account | undefined> {
    const record = await this.enabledRecord(id);
    if (!record) return undefined;
    return {
      accountId: record._id,
      claims: async (): Promise<AccountClaims> => ({
        sub: record._id,
        email: record.email,
        email_verified: record.emailVerified,
        ...Object.fromEntries(PROFILE_FIELDS.flatMap((field) => (record[field] ? [[field, record[field]]] : []))),
        updated_at: Math.floor(record.updatedAt.getTime() / 1000),
        roles: record.roles,
      }),
    };
  }
}
