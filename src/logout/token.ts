/**
 * Logout tokens (OpenID Connect Back-Channel Logout 1.0, section 2.4), built exactly as
 * oidc-provider's own Client#backchannelLogout builds them, so there is one signing path: the
 * provider's current keys and `kid`, the client's id_token_signed_response_alg (and its ID token
 * encryption, if registered), `typ: logout+jwt`, iss, aud, iat, exp (120 s), jti, events, sub, and
 * sid for clients that registered backchannel_logout_session_required. A logout token never
 * carries a nonce (the claims come from `{ sub }` alone).
 * @see node_modules/oidc-provider/lib/models/client.js (backchannelLogout)
 */
import { randomBytes } from 'node:crypto';
import type { Client, Provider } from 'oidc-provider';

export const BACKCHANNEL_LOGOUT_EVENT = 'http://schemas.openid.net/event/backchannel-logout';

/** What oidc-provider's Client model holds for back-channel logout. */
export interface LogoutTarget {
  readonly clientId: string;
  readonly backchannelLogoutUri?: string | undefined;
  readonly backchannelLogoutSessionRequired?: boolean | undefined;
}

/** Signed now: each attempt sends a fresh token, so a retry never carries an expired one. */
export async function signLogoutToken(provider: Provider, client: Client, sub: string, sid: string | undefined): Promise<string> {
  const token = new provider.IdToken({ sub }, { client });
  // Only `sub` passes the claims filter; everything else is set explicitly below.
  (token as unknown as { mask: Record<string, null> }).mask = { sub: null };
  token.set('events', { [BACKCHANNEL_LOGOUT_EVENT]: {} });
  // A new jti per attempt: an RP that remembers jtis must not refuse the retry of a token it
  // never received as a replay.
  token.set('jti', randomBytes(16).toString('base64url'));
  if ((client as LogoutTarget).backchannelLogoutSessionRequired && sid) token.set('sid', sid);
  return token.issue({ use: 'logout' });
}
