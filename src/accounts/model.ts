import { randomUUID } from 'node:crypto';
import { Schema, type Connection, type Model } from 'mongoose';
import { MAX_LENGTH, PROFILE_FIELDS, type Profile } from './profile.ts';

/**
 * TOTP (issue 4). The secrets are stored as they are, like the signing keys: whoever can read the
 * database can mint codes, so protect database access. Which codes have been used is recorded in
 * `mfa_used` (see mfa.ts), not here.
 */
export interface AccountMfa {
  /** Base32 TOTP secret. */
  secret: string;
  enabledAt: Date;
  /** SHA-256 (hex) of each recovery code of the current set, salted with the account id. */
  recoveryCodeHashes: string[];
}

/** A secret shown to the user but not yet confirmed with a code; inactive until then. */
export interface PendingMfa {
  secret: string;
  expiresAt: Date;
}

/**
 * A password hash brought over by `user import` (imported-hashes.ts), as the import line gave it:
 * verified at the first sign-in and then replaced by an argon2id `passwordHash`.
 */
export interface ImportedPassword {
  format: 'argon2' | 'bcrypt' | 'django' | 'pbkdf2';
  hash: string;
  /** pbkdf2 only: pbkdf2-sha256, pbkdf2-sha512, pbkdf2-sha1 or pbkdf2 (SHA-1), base64 salt. */
  algorithm?: string;
  iterations?: number;
  salt?: string;
}

/** What the last `user import` set, so a later one can tell the user's own changes from its own. */
export interface ImportMark {
  at: Date;
  /** SHA-256 (hex) of the TOTP secret it set; not the secret. */
  totp?: string;
  /** What import lines are matched by: their `id`, or the email the account was first imported with. */
  source?: string;
  /** SHA-256 (hex) of each field as the last import set it (email, email_verified, roles, ...). */
  values?: Record<string, string>;
}

/** The profile claims (profile.ts) are stored under their claim names, validated, absent when unset. */
export interface AccountRecord extends Profile {
  _id: string;
  /** Stored normalised (trimmed, lower-case); the unique index makes it case-insensitive. */
  email: string;
  /**
   * argon2id. Absent on an imported account until its first sign-in (importedPassword then), or
   * imported without a password (it signs in after a password reset).
   */
  passwordHash?: string;
  importedPassword?: ImportedPassword;
  imported?: ImportMark;
  emailVerified: boolean;
  roles: string[];
  disabled: boolean;
  mfa?: AccountMfa;
  mfaPending?: PendingMfa;
  /** Set (with disabled) when `user delete` starts; the record itself goes last (erase.ts). */
  deletingAt?: Date;
  createdAt: Date;
  updatedAt: Date;
}

// Subdocuments (not nested paths) so that accounts without MFA store no empty `mfa` object.
const mfaSchema = new Schema<AccountMfa>(
  {
    secret: { type: String, required: true },
    enabledAt: { type: Date, required: true },
    recoveryCodeHashes: { type: [String], required: true },
  },
  { _id: false, strict: 'throw' },
);

const pendingMfaSchema = new Schema<PendingMfa>(
  {
    secret: { type: String, required: true },
    expiresAt: { type: Date, required: true },
  },
  { _id: false, strict: 'throw' },
);

const importedPasswordSchema = new Schema<ImportedPassword>(
  {
    format: { type: String, required: true, enum: ['argon2', 'bcrypt', 'django', 'pbkdf2'] },
    hash: { type: String, required: true },
    algorithm: { type: String },
    iterations: { type: Number },
    salt: { type: String },
  },
  { _id: false, strict: 'throw' },
);

const importMarkSchema = new Schema<ImportMark>(
  { at: { type: Date, required: true }, totp: { type: String }, source: { type: String }, values: { type: Schema.Types.Mixed } },
  { _id: false, strict: 'throw' },
);

const accountSchema = new Schema<AccountRecord>(
  {
    _id: { type: String, default: () => randomUUID() },
    email: { type: String, required: true, unique: true },
    passwordHash: { type: String },
    importedPassword: { type: importedPasswordSchema, required: false },
    imported: { type: importMarkSchema, required: false },
    ...Object.fromEntries(PROFILE_FIELDS.map((field) => [field, { type: String, maxlength: MAX_LENGTH[field] }])),
    emailVerified: { type: Boolean, default: false },
    roles: { type: [String], default: [] },
    disabled: { type: Boolean, default: false },
    mfa: { type: mfaSchema, required: false },
    mfaPending: { type: pendingMfaSchema, required: false },
    deletingAt: { type: Date },
  },
  { timestamps: true, versionKey: false, strict: 'throw' },
);

// Import lines without an id find their account by the email it was imported with.
accountSchema.index({ 'imported.source': 1 });

export type AccountModel = Model<AccountRecord>;

export function accountModel(connection: Connection): AccountModel {
  return (connection.models.Account as AccountModel | undefined)
    ?? connection.model<AccountRecord>('Account', accountSchema, 'accounts');
}
