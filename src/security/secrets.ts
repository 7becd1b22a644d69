/**
 * Secrets at rest (signing keys, client secrets, TOTP secrets) sealed with SECRETS_KEY: AES-256-GCM, a random
 * 96-bit IV per value, and the id of the key that sealed it, so keys can be replaced one at a
 * time (the first key seals, every listed key opens; `keys reseal` moves old values to the first).
 *
 * A sealed value is one string, `sealed:v1:<key id>:<iv>:<ciphertext>:<tag>` (base64url parts),
 * so it fits any field that held the plain value. `purpose` is bound as additional authenticated
 * data: a value sealed as one client's secret does not open as another's, nor as a signing key.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { SecretsKey } from '../config.ts';

const PREFIX = 'sealed:v1:';

export class SecretBox {
  private readonly keys: readonly SecretsKey[] | undefined;

  /** Without keys (development only), values are stored and read as they are. */
  constructor(keys: readonly SecretsKey[] | undefined) {
    this.keys = keys?.length ? keys : undefined;
  }

  get enabled(): boolean {
    return this.keys !== undefined;
  }

  /** The id of the key that seals now (undefined without keys). */
  get currentKeyId(): string | undefined {
    return this.keys?.[0]?.id;
  }

  static isSealed(value: string): boolean {
    return value.startsWith(PREFIX);
  }

  /** The id of the key that sealed `value`, if it is sealed. */
  static keyIdOf(value: string): string | undefined {
    return SecretBox.isSealed(value) ? value.slice(PREFIX.length).split(':')[0] : undefined;
  }

  seal(plain: string, purpose: string): string {
    const key = this.keys?.[0];
    if (!key) return plain;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key.key, iv);
    cipher.setAAD(Buffer.from(purpose));
    const data = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return `${PREFIX}${key.id}:${[iv, data, cipher.getAuthTag()].map((b) => b.toString('base64url')).join(':')}`;
  }

  /**
   * The plain value. A value that is not sealed is returned as it is: data written before
   * SECRETS_KEY was set stays readable until `keys reseal` (or the migration) seals it.
   */
  open(value: string, purpose: string): string {
    if (!SecretBox.isSealed(value)) return value;
    const [keyId, iv, data, tag] = value.slice(PREFIX.length).split(':');
    const key = this.keys?.find((k) => k.id === keyId);
    if (!key || !iv || !data || !tag) {
      throw new Error(`a secret is sealed with SECRETS_KEY id "${keyId}", which is not configured`);
    }
    const authTag = Buffer.from(tag, 'base64url');
    // GCM would accept a truncated tag, and with it a forgery far cheaper to find.
    if (authTag.length !== 16) throw new Error('a sealed secret has a malformed authentication tag');
    const decipher = createDecipheriv('aes-256-gcm', key.key, Buffer.from(iv, 'base64url'), { authTagLength: 16 });
    decipher.setAAD(Buffer.from(purpose));
    decipher.setAuthTag(authTag);
    return Buffer.concat([decipher.update(Buffer.from(data, 'base64url')), decipher.final()]).toString('utf8');
  }

  /** Whether `value` should be sealed again: in the clear while keys exist, or under an older key. */
  needsReseal(value: string): boolean {
    if (!this.keys) return false;
    return SecretBox.keyIdOf(value) !== this.currentKeyId;
  }
}
