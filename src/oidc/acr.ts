/**
 * Authentication context classes (the `acr` claim): the password alone, or the password and a
 * second factor. OpenID Connect Core 3.1.2.1 makes `acr_values` a list of preferences, so it never
 * refuses a sign-in: whoever has a second factor uses it (and gets ACR_MFA), everyone else gets
 * ACR_PASSWORD. Only an essential `acr` in the claims parameter (Core 5.5.1.1) or the client's own
 * `require_mfa` can demand a class.
 */
import type { Client } from 'oidc-provider';
import { clientPolicy } from './client-metadata.ts';

export const ACR_PASSWORD = 'urn:oidc-idp:acr:pwd';
export const ACR_MFA = 'urn:oidc-idp:acr:mfa';
export const ACR_VALUES = [ACR_PASSWORD, ACR_MFA] as const;

/** What this request demands: nothing, a second factor, or a class this provider cannot reach. */
export type AcrDemand = 'none' | 'mfa' | 'unreachable';

interface EssentialAcr { essential?: unknown; value?: unknown; values?: unknown }

/** The id_token.acr member of a claims parameter, whether still JSON text or already parsed. */
function essentialAcr(claims: unknown): EssentialAcr | undefined {
  let parsed = claims;
  if (typeof claims === 'string') {
    try {
      parsed = JSON.parse(claims);
    } catch {
      return undefined; // oidc-provider refuses malformed claims parameters itself
    }
  }
  const acr = (parsed as { id_token?: { acr?: unknown } } | null | undefined)?.id_token?.acr;
  return acr && typeof acr === 'object' && (acr as EssentialAcr).essential === true ? acr as EssentialAcr : undefined;
}

function demandOf(acr: EssentialAcr | undefined): AcrDemand {
  if (!acr) return 'none';
  const accepted = Array.isArray(acr.values) ? acr.values : acr.value !== undefined ? [acr.value] : [];
  if (accepted.length === 0 || accepted.includes(ACR_PASSWORD)) return 'none';
  return accepted.includes(ACR_MFA) ? 'mfa' : 'unreachable';
}

/** The class this authorization request requires (`claims` as in the request, text or parsed). */
export function acrDemand(claims: unknown, client: Client | undefined): AcrDemand {
  const demand = demandOf(essentialAcr(claims));
  if (demand === 'unreachable') return demand;
  return clientPolicy(client).requireMfa ? 'mfa' : demand;
}

/**
 * The `acr` to record for a sign-in that reached `reached`. A second factor also satisfies the
 * password class, so when an essential request accepts only ACR_PASSWORD that is what is said
 * (oidc-provider would otherwise ask for the sign-in again).
 */
export function reportedAcr(reached: typeof ACR_PASSWORD | typeof ACR_MFA, claims: unknown): string {
  const acr = essentialAcr(claims);
  const accepted = acr && Array.isArray(acr.values) ? acr.values : acr?.value !== undefined ? [acr.value] : undefined;
  if (reached === ACR_MFA && accepted && !accepted.includes(ACR_MFA) && accepted.includes(ACR_PASSWORD)) return ACR_PASSWORD;
  return reached;
}
