import { randomUUID } from 'node:crypto';
import { Schema, type Connection, type Model } from 'mongoose';

export interface AccountRecord {
  _id: string;
  /** Stored normalised (trimmed, lower-case); the unique index makes it case-insensitive. */
  email: string;
  passwordHash: string;
  name?: string;
  emailVerified: boolean;
  roles: string[];
  disabled: boolean;
  createdAt: Date;
  updatedAt: Date;
}

const accountSchema = new Schema<AccountRecord>(
  {
    _id: { type: String, default: () => randomUUID() },
    email: { type: String, required: true, unique: true },
    passwordHash: { type: String, required: true },
    name: { type: String, maxlength: 200 },
    emailVerified: { type: Boolean, default: false },
    roles: { type: [String], default: [] },
    disabled: { type: Boolean, default: false },
  },
  { timestamps: true, versionKey: false, strict: 'throw' },
);

export type AccountModel = Model<AccountRecord>;

export function accountModel(connection: Connection): AccountModel {
  return (connection.models.Account as AccountModel | undefined)
    ?? connection.model<AccountRecord>('Account', accountSchema, 'accounts');
}
