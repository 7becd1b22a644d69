/**
 * The password policy, for self-service (registration, reset, change) and the admin CLI alike:
 * long enough, not absurdly long (argon2 still has to hash it), hard to guess by the zxcvbn-ts
 * estimate (dictionaries of common passwords, words and names, keyboard patterns, repeats and
 * sequences, with the account's own email and name as extra words), and not built from the
 * account's email address.
 */
import { ZxcvbnFactory } from '@zxcvbn-ts/core';
import * as common from '@zxcvbn-ts/language-common';
import * as en from '@zxcvbn-ts/language-en';
import { PASSWORD_MAX_LENGTH } from '../accounts/password.ts';

/** minScore is zxcvbn's 0 (trivial) to 4 (very hard to guess). */
export interface PasswordPolicy {
  minLength: number;
  minScore: number;
}

/** Whose password it is: their email and name must not make it easier to guess. */
export interface PasswordOwner {
  email: string;
  name?: string | null | undefined;
}

// Built once: loading the dictionaries takes about a tenth of a second. Anyone can post these forms
// before any rate limit applies, so a check must stay cheap even for a crafted password: Levenshtein
// matching stays off and l33t substitutions are capped (each alone lets one check take hundreds of
// milliseconds), and only the first 64 characters are estimated (longer is strong unless that
// start is weak). Worst case measured: about 60 ms; a typical password: under 10 ms.
const estimator = new ZxcvbnFactory({
  translations: en.translations,
  graphs: common.adjacencyGraphs,
  dictionary: { ...common.dictionary, ...en.dictionary },
  maxLength: 64,
  l33tMaxSubstitutions: 10,
});

const unique = (items: readonly string[]) => [...new Set(items)];

/** The owner's words that zxcvbn should treat as known to an attacker. */
function ownerWords(owner: PasswordOwner): string[] {
  const address = owner.email.trim().toLowerCase();
  const localPart = address.split('@')[0] ?? '';
  const name = owner.name?.trim() ?? '';
  return unique([address, localPart, ...localPart.split(/[._+-]+/), name, ...name.split(/\s+/)].filter((w) => w.length >= 3));
}

function containsEmail(password: string, owner: PasswordOwner): boolean {
  const lower = password.toLowerCase();
  const address = owner.email.trim().toLowerCase();
  const localPart = address.split('@')[0] ?? '';
  return address !== '' && (lower.includes(address) || (localPart.length >= 3 && lower.includes(localPart)));
}

/**
 * What is wrong with a proposed password, as sentences for the page (the estimator's warning and
 * suggestions included); empty when it is acceptable.
 */
export function passwordProblems(password: string, owner: PasswordOwner, policy: PasswordPolicy): string[] {
  if (password.length > PASSWORD_MAX_LENGTH) return [`Use at most ${PASSWORD_MAX_LENGTH} characters.`];
  const problems: string[] = [];
  if (password.length < policy.minLength) problems.push(`Use at least ${policy.minLength} characters.`);
  if (containsEmail(password, owner)) problems.push('Do not use your email address in your password.');
  const { score, feedback } = estimator.check(password, ownerWords(owner));
  if (score < policy.minScore) {
    problems.push('This password is too easy to guess.');
    if (feedback.warning) problems.push(feedback.warning);
    problems.push(...feedback.suggestions);
  }
  return unique(problems);
}

/** The hint shown next to every new-password field. */
export function passwordHint(policy: PasswordPolicy): string {
  return `At least ${policy.minLength} characters, and hard to guess. A few unrelated words make a strong password that is easy to remember; avoid your email address, names and common passwords.`;
}
