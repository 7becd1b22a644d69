/**
 * Password hashes brought over from other systems by `user import` (src/accounts/transfer.ts), in
 * the forms Keycloak, Auth0 and Django export them:
 *   argon2  a PHC string: `$argon2id$v=19$m=..,t=..,p=..$salt$hash` (also $argon2i$, $argon2d$)
 *   bcrypt  `$2a$`, `$2b$` or `$2y$` (Auth0's export)
 *   django  Django's `password` column: `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`, and
 *           `pbkdf2_sha1$...`, `argon2$argon2id$...`, `bcrypt$$2b$...`, `bcrypt_sha256$$2b$...`
 *   pbkdf2  Keycloak's credential: `algorithm` (credentialData.algorithm: pbkdf2-sha256,
 *           pbkdf2-sha512, or pbkdf2 for SHA-1), `iterations` (hashIterations), `salt` and `hash`
 *           (secretData.salt and .value, base64)
 * Each is checked once at import (checkImportedPassword: a hash this module could not verify, or
 * with parameters outside LIMITS, is refused there with a reason that never quotes it) and again
 * at sign-in, where anything malformed is simply a wrong password. A hash that matches is
 * replaced by argon2id at once (AccountService.signIn).
 */
import { createHash, pbkdf2, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import argon2 from 'argon2';
import bcrypt from 'bcryptjs';
import type { ImportedPassword } from './model.ts';
import type { PasswordHasher } from './password.ts';

const pbkdf2Async = promisify(pbkdf2);

/**
 * What an imported hash may use. The floors refuse what no mainstream release of these systems
 * wrote (PBKDF2 under RFC 8018's 1,000 iterations, bcrypt under cost 8, argon2 under 1 MiB): such
 * a line is test data or a mistake. The ceilings bound one sign-in's work (bcryptjs runs on the
 * event loop in slices; PBKDF2 and argon2 on the thread pool).
 */
export const LIMITS = {
  // The highest that real exports use (Django 5 writes 870,000+ PBKDF2 iterations, Keycloak 27,500
  // to 210,000; bcrypt 10 to 12; argon2: Django m=100 MiB p=8, Keycloak t=5), with room: one check must stay a fraction of
  // a second, since each holds a thread (or, for bcryptjs, the event loop in slices).
  pbkdf2Iterations: [1_000, 1_300_000],
  bcryptCost: [8, 12],
  argon2MemoryKiB: [1_024, 131_072],
  argon2TimeCost: [1, 8],
  argon2Parallelism: [1, 8],
  saltBytes: [8, 1_024],
  hashBytes: [16, 128],
} as const;

type Digest = 'sha1' | 'sha256' | 'sha512';

/** A hash taken apart, ready to verify. */
type Parsed =
  | { kind: 'argon2'; phc: string; type: 'argon2id' | 'argon2i' | 'argon2d' }
  | { kind: 'bcrypt'; hash: string; sha256Hex: boolean }
  | { kind: 'pbkdf2'; digest: Digest; iterations: number; salt: Buffer; hash: Buffer };

const KEYCLOAK_PBKDF2: Record<string, Digest> = { 'pbkdf2-sha256': 'sha256', 'pbkdf2-sha512': 'sha512', pbkdf2: 'sha1', 'pbkdf2-sha1': 'sha1' };
const DJANGO_PBKDF2: Record<string, Digest> = { pbkdf2_sha256: 'sha256', pbkdf2_sha1: 'sha1' };
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const PHC_ARGON2 = /^\$(argon2id|argon2i|argon2d)\$(?:v=(16|19)\$)?([a-z]=\d{1,10}(?:,[a-z]=\d{1,10}){2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;
const BCRYPT = /^\$2[aby]\$(\d{2})\$[./A-Za-z0-9]{53}$/;
const MAX_HASH_TEXT = 1_024;

const within = (value: number, [low, high]: readonly [number, number]) => Number.isInteger(value) && value >= low && value <= high;

function bytes(text: string, what: string): Buffer | string {
  if (!BASE64.test(text)) return `${what} is not base64`;
  const decoded = Buffer.from(text, 'base64');
  const limits = what === 'salt' ? LIMITS.saltBytes : LIMITS.hashBytes;
  return within(decoded.length, limits) ? decoded : `${what} must be ${limits[0]} to ${limits[1]} bytes`;
}

function parseArgon2(phc: string): Parsed | string {
  const match = PHC_ARGON2.exec(phc);
  if (!match) return 'not an argon2 PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash)';
  const [, type, , params, salt, hash] = match;
  const values = Object.fromEntries(params!.split(',').map((pair) => [pair[0], Number(pair.slice(2))]));
  const { m, t, p } = values as Record<string, number>;
  if (m === undefined || t === undefined || p === undefined) return 'argon2 parameters must be m, t and p';
  if (!within(m, LIMITS.argon2MemoryKiB) || m < 8 * p) return `argon2 memory must be ${LIMITS.argon2MemoryKiB.join(' to ')} KiB`;
  if (!within(t, LIMITS.argon2TimeCost)) return `argon2 time cost must be ${LIMITS.argon2TimeCost.join(' to ')}`;
  if (!within(p, LIMITS.argon2Parallelism)) return `argon2 parallelism must be ${LIMITS.argon2Parallelism.join(' to ')}`;
  for (const [part, what] of [[salt!, 'salt'], [hash!, 'hash']] as const) {
    const decoded = bytes(part, what);
    if (typeof decoded === 'string') return `argon2 ${decoded}`;
  }
  return { kind: 'argon2', phc, type: type as 'argon2id' | 'argon2i' | 'argon2d' };
}

function parseBcrypt(hash: string, sha256Hex = false): Parsed | string {
  const match = BCRYPT.exec(hash);
  if (!match) return 'not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)';
  const cost = Number(match[1]);
  if (!within(cost, LIMITS.bcryptCost)) return `bcrypt cost must be ${LIMITS.bcryptCost.join(' to ')}, not ${cost}`;
  return { kind: 'bcrypt', hash, sha256Hex };
}

function parsePbkdf2(digest: Digest | undefined, iterations: unknown, salt: Buffer | string, hash: string): Parsed | string {
  if (!digest) return 'unknown PBKDF2 algorithm';
  if (typeof iterations !== 'number' || !within(iterations, LIMITS.pbkdf2Iterations)) {
    return `PBKDF2 iterations must be ${LIMITS.pbkdf2Iterations[0]} to ${LIMITS.pbkdf2Iterations[1]}`;
  }
  if (typeof salt === 'string') return `PBKDF2 ${salt}`;
  const decoded = bytes(hash, 'hash');
  if (typeof decoded === 'string') return `PBKDF2 ${decoded}`;
  return { kind: 'pbkdf2', digest, iterations, salt, hash: decoded };
}

/** Django's `password` column: `<algorithm>$<the rest>`. */
function parseDjango(encoded: string): Parsed | string {
  const [algorithm, ...rest] = encoded.split('$');
  if (algorithm === 'argon2') return parseArgon2(encoded.slice('argon2'.length));
  if (algorithm === 'bcrypt' || algorithm === 'bcrypt_sha256') {
    return rest[0] === '' ? parseBcrypt(encoded.slice(algorithm.length + 1), algorithm === 'bcrypt_sha256') : 'not a Django bcrypt hash';
  }
  if (algorithm === undefined || !Object.hasOwn(DJANGO_PBKDF2, algorithm)) return 'unsupported Django hasher (pbkdf2_sha256, pbkdf2_sha1, argon2, bcrypt, bcrypt_sha256)';
  if (rest.length !== 3 || !/^\d{1,10}$/.test(rest[0]!)) return 'not a Django PBKDF2 hash (pbkdf2_sha256$<iterations>$<salt>$<hash>)';
  // Django's salt is text, hashed as its UTF-8 bytes.
  const salt = Buffer.from(rest[1]!, 'utf8');
  const saltOrProblem = within(salt.length, LIMITS.saltBytes) ? salt : `salt must be ${LIMITS.saltBytes.join(' to ')} bytes`;
  return parsePbkdf2(DJANGO_PBKDF2[algorithm]!, Number(rest[0]), saltOrProblem, rest[2]!);
}

function parse(password: ImportedPassword): Parsed | string {
  if (password.hash.length > MAX_HASH_TEXT) return 'hash is too long';
  switch (password.format) {
    case 'argon2':
      return parseArgon2(password.hash);
    case 'bcrypt':
      return parseBcrypt(password.hash);
    case 'django':
      return parseDjango(password.hash);
    case 'pbkdf2': {
      const salt = bytes(password.salt ?? '', 'salt');
      // Own keys only: "constructor" or "__proto__" name no digest.
      const digest = Object.hasOwn(KEYCLOAK_PBKDF2, password.algorithm ?? '') ? KEYCLOAK_PBKDF2[password.algorithm!] : undefined;
      return parsePbkdf2(digest, password.iterations, salt, password.hash);
    }
    default:
      return 'unknown format';
  }
}

const FORMAT_KEYS: Record<ImportedPassword['format'], readonly string[]> = {
  argon2: ['format', 'hash'], bcrypt: ['format', 'hash'], django: ['format', 'hash'],
  pbkdf2: ['format', 'algorithm', 'iterations', 'salt', 'hash'],
};

/**
 * The `password` of an import line, checked: the stored form, or why it is refused. The reason
 * never contains the hash or any part of it.
 */
export function checkImportedPassword(input: unknown): { password: ImportedPassword } | { problem: string } {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) return { problem: 'password must be an object with "format" and "hash"' };
  const fields = input as Record<string, unknown>;
  const format = fields.format;
  if (typeof format !== 'string' || !Object.hasOwn(FORMAT_KEYS, format)) return { problem: 'password format must be argon2, bcrypt, django or pbkdf2' };
  const allowed = FORMAT_KEYS[format as ImportedPassword['format']];
  const unknown = Object.keys(fields).find((key) => !allowed.includes(key));
  if (unknown !== undefined) return { problem: `password of format ${format} takes only ${allowed.join(', ')}` };
  if (typeof fields.hash !== 'string') return { problem: 'password hash must be a string' };
  if (format === 'pbkdf2' && (typeof fields.algorithm !== 'string' || typeof fields.salt !== 'string' || typeof fields.iterations !== 'number')) {
    return { problem: 'pbkdf2 password needs algorithm, iterations (a number), salt and hash' };
  }
  const password = { ...fields } as unknown as ImportedPassword;
  const parsed = parse(password);
  return typeof parsed === 'string' ? { problem: `password: ${parsed}` } : { password };
}

async function verifyParsed(parsed: Parsed, password: string): Promise<boolean> {
  switch (parsed.kind) {
    case 'argon2':
      return argon2.verify(parsed.phc, password);
    case 'bcrypt': {
      // Django's bcrypt_sha256 hashes the hex SHA-256 of the password (bcrypt reads 72 bytes at most).
      const input = parsed.sha256Hex ? createHash('sha256').update(password, 'utf8').digest('hex') : password;
      return bcrypt.compare(input, parsed.hash);
    }
    case 'pbkdf2': {
      const derived = await pbkdf2Async(Buffer.from(password, 'utf8'), parsed.salt, parsed.iterations, parsed.hash.length, parsed.digest);
      return timingSafeEqual(derived, parsed.hash);
    }
  }
}

/** Whether `password` matches the imported hash; false (never a throw) for anything malformed. */
export async function verifyImportedPassword(imported: ImportedPassword, password: string): Promise<boolean> {
  try {
    const parsed = parse(imported);
    return typeof parsed === 'string' ? false : await verifyParsed(parsed, password);
  } catch {
    return false;
  }
}

/**
 * The argon2id hash to store once an imported hash has matched: the imported one itself when it
 * is argon2id with today's parameters (an export of this provider), a new one otherwise.
 */
export async function replacementHash(hasher: PasswordHasher, imported: ImportedPassword, password: string): Promise<string> {
  const current = imported.format === 'argon2' && imported.hash.startsWith('$argon2id$') && !hasher.needsRehash(imported.hash);
  return current ? imported.hash : hasher.hash(password);
}

/**
 * Checks a sign-in's password against what the account stores: its argon2id hash or, until the
 * first sign-in after an import, the imported hash (see PasswordHasher.verifyImported for the
 * timing). `replacement` is the argon2id hash to store when an imported hash matched.
 */
export async function checkStoredPassword(
  hasher: PasswordHasher, record: { passwordHash?: string | undefined; importedPassword?: ImportedPassword | undefined } | null, password: string,
): Promise<{ valid: boolean; replacement?: string }> {
  const imported = record && !record.passwordHash ? record.importedPassword : undefined;
  if (!imported) return { valid: await hasher.verify(record?.passwordHash, password) };
  const valid = await hasher.verifyImported(() => verifyImportedPassword(imported, password), password);
  return valid ? { valid, replacement: await replacementHash(hasher, imported, password) } : { valid };
}
