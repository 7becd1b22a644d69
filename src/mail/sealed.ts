/**
 * What a queued message keeps at rest: its recipient and content, live links included, sealed
 * with AES-256-GCM under a key derived (HKDF-SHA256) from the cookie keys. Sealing uses the newest
 * key; opening finds the key by the id stored with the box, so mail queued before a key rotation
 * still opens while its key stays in the list. The message id is authenticated with the content:
 * a box copied onto another message does not open.
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';

export interface Sealed {
  /** Which key sealed it: the first 8 bytes of the SHA-256 of the derived key, base64url. */
  readonly key: string;
  /** base64url of IV (12 bytes), ciphertext, tag (16 bytes). */
  readonly box: string;
}

export interface Sealer {
  seal(associated: string, plaintext: string): Sealed;
  /** Undefined when there is no box, no key has its id, or the box or its message id was altered. */
  open(associated: string, sealed: Sealed | undefined): string | undefined;
}

const IV_BYTES = 12;
const TAG_BYTES = 16;
/** A purpose of its own, so this key is never the one cookies are signed with. */
const INFO = 'oidc-idp mail outbox v1';

interface Key {
  readonly id: string;
  readonly secret: Buffer;
}

function deriveKey(secret: string): Key {
  const derived = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), INFO, 32));
  return { id: createHash('sha256').update(derived).digest().subarray(0, 8).toString('base64url'), secret: derived };
}

/** `secrets` newest first, as COOKIE_KEYS. */
export function createSealer(secrets: readonly string[]): Sealer {
  if (secrets.length === 0) throw new Error('sealing queued mail needs at least one key');
  const keys = secrets.map(deriveKey);
  const newest = keys[0]!;
  return {
    seal(associated, plaintext) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', newest.secret, iv);
      cipher.setAAD(Buffer.from(associated));
      const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
      return { key: newest.id, box: Buffer.concat([iv, ciphertext, cipher.getAuthTag()]).toString('base64url') };
    },
    open(associated, sealed) {
      const key = keys.find((candidate) => candidate.id === sealed?.key);
      if (!key || typeof sealed?.box !== 'string') return undefined;
      const bytes = Buffer.from(sealed.box, 'base64url');
      if (bytes.length < IV_BYTES + TAG_BYTES) return undefined;
      const decipher = createDecipheriv('aes-256-gcm', key.secret, bytes.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
      decipher.setAAD(Buffer.from(associated));
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
      try {
        return Buffer.concat([decipher.update(bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES)), decipher.final()]).toString('utf8');
      } catch {
        return undefined;
      }
    },
  };
}
