/**
 * Opaque tokens of the three introspectable models get ids of different lengths, so the adapter
 * knows from a presented token which collection can hold it: introspection and revocation (which
 * look a token up as AccessToken, ClientCredentials and RefreshToken at once) then query one
 * collection instead of three. The length carries no secret: every id keeps at least 256 random
 * bits (oidc-provider's `formats.bitsOfOpaqueRandomness`, six bits per character).
 * Ids issued before this scheme are 43 characters for every model and are still looked up
 * everywhere.
 */
const LENGTHS: Record<string, number> = { AccessToken: 44, ClientCredentials: 45, RefreshToken: 46 };
const LEGACY_LENGTH = 43;
const BITS_PER_CHARACTER = 6;
const DEFAULT_BITS = 256;

/** For oidc-provider's formats.bitsOfOpaqueRandomness. */
export function opaqueTokenBits(kind: string): number {
  const length = LENGTHS[kind];
  return length ? length * BITS_PER_CHARACTER : DEFAULT_BITS;
}

/** False when the id's length says it was issued as another model (no query needed). */
export function mayBeOf(model: string, id: string): boolean {
  const own = LENGTHS[model];
  if (own === undefined || id.length === own || id.length === LEGACY_LENGTH) return true;
  return !Object.values(LENGTHS).includes(id.length);
}
