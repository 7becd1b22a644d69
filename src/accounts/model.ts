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

/** The profile claims (profile.ts) are stored under their claim names, validated, absent when unset. */
export interface AccountRecord extends Profile {
  _id: string;
  /** Stored normalised (trimmed, lower-case); the unique index makes it case-insensitive. */
  email: string;
  passwordHash: string;
  emailVerified: boolean;
  roles: string[];
  disabled: boolean;
  mfa?: AccountMfa;
  mfaPending?: PendingMfa;
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

const accountSchema = new Schema<AccountRecord>(
  {
    _id: { type: String, default: () => randomUUID() },
    email: { type: String, required: true, unique: true },
    passwordHash: { type: String, required: true },
    ...Object.fromEntries(PROFILE_FIELDS.map((field) => [field, { type: String, maxlength: MAX_LENGTH[field] }])),
    emailVerified: { type: Boolean, default: false },
    roles: { type: [String], default: [] },
    disabled: { type: Boolean, default: false },
    mfa: { type: mfaSchema, required: false },
    mfaPending: { type: pendingMfaSchema, required: false },
  },
  { timestamps: true, versionKey: false, strict: 'throw' },
);

export type AccountModel = Model<AccountRecord>;

export function accountModel(connection: Connection): AccountModel {
  return (connection.models.Account as AccountModel | undefined)
    ?? connection.model<AccountRecord>('Account', accountSchema, 'accounts');
}
