/**
 * The password policy for self-service (registration, reset, change): long enough, not absurdly
 * long (argon2 still has to hash it), not one of the 10,000 most common passwords, and not built
 * from the account's own email address.
 *
 * common-passwords.txt: the 10,000 most frequent entries (lower-cased, de-duplicated) of the
 * password list shipped with @zxcvbn-ts/language-common 4.1.3 (MIT, (c) 2012-2016 Dan Wheeler
 * and Dropbox, Inc., (c) 2021 @zxcvbn-ts), which is ordered by frequency.
 */
import fs from 'node:fs';
import { PASSWORD_MAX_LENGTH } from '../accounts/password.ts';

let common: Set<string> | undefined;

function commonPasswords(): Set<string> {
  common ??= new Set(fs.readFileSync(new URL('./common-passwords.txt', import.meta.url), 'utf8').split('\n').filter(Boolean));
  return common;
}

export interface PasswordPolicy {
  minLength: number;
}

/** What is wrong with a proposed password, as sentences for the page; empty when it is acceptable. */
export function passwordProblems(password: string, email: string, policy: PasswordPolicy): string[] {
  const problems: string[] = [];
  if (password.length < policy.minLength) problems.push(`Use at least ${policy.minLength} characters.`);
  if (password.length > PASSWORD_MAX_LENGTH) problems.push(`Use at most ${PASSWORD_MAX_LENGTH} characters.`);
  const lower = password.toLowerCase();
  if (commonPasswords().has(lower)) problems.push('This is one of the most common passwords; choose another.');
  const address = email.trim().toLowerCase();
  const localPart = address.split('@')[0] ?? '';
  if (address && (lower.includes(address) || (localPart.length >= 3 && lower.includes(localPart)))) {
    problems.push('Do not use your email address in your password.');
  }
  return problems;
}

/** The hint shown next to every new-password field. */
export function passwordHint(policy: PasswordPolicy): string {
  return `At least ${policy.minLength} characters. A few unrelated words make a strong password that is easy to remember; avoid your email address and common passwords.`;
}
