/**
 * Where sign-outs turn into back-channel logout deliveries (./deliveries.ts):
 * - RP-initiated logout (/session/end) is oidc-provider's: for each app of the session that has a
 *   backchannel_logout_uri it calls Client#backchannelLogout(sub, sid), which would POST once,
 *   inline, without retries. That method is replaced on this provider's Client model so the
 *   delivery is queued instead: the sign-out page no longer waits on the apps, and failures are
 *   retried.
 * - Our own account-wide sign-outs (sign out everywhere, account disabled, password set or reset,
 *   an administrator's revoke-session) end sessions in the store, which reports them
 *   (ArtifactStore.onSessionsEnded) with their payloads: each app the session signed in to gets one.
 * The listener is registered in every process that opens the services, so a CLI command queues
 * the deliveries and the server's worker sends them.
 */
import type { Client, Provider } from 'oidc-provider';
import type { ArtifactStore, LiveArtifact } from '../../adapters/mongodb.ts';
import type { Logger } from '../observability/logger.ts';
import type { Logout, LogoutDeliveries } from './deliveries.ts';

interface SessionPayload {
  accountId?: string;
  authorizations?: Record<string, { sid?: string } | undefined>;
}

/** The deliveries for ended sessions: one per app with a logout URI and session (or account, for apps that take no sid). */
export async function logoutsFor(provider: Provider, sessions: readonly LiveArtifact[]): Promise<Logout[]> {
  const clients = new Map<string, Promise<Client | undefined>>();
  const clientOf = (id: string) => {
    if (!clients.has(id)) clients.set(id, provider.Client.find(id).catch(() => undefined));
    return clients.get(id)!;
  };
  const logouts = new Map<string, Logout>();
  for (const { payload } of sessions) {
    const { accountId, authorizations = {} } = payload as SessionPayload;
    if (!accountId) continue;
    for (const [clientId, authorization] of Object.entries(authorizations)) {
      const client = await clientOf(clientId);
      if (!client?.backchannelLogoutUri) continue;
      const sid = authorization?.sid;
      // An app that takes no sid hears about the account once, however many sessions ended.
      const key = JSON.stringify([clientId, accountId, client.backchannelLogoutSessionRequired ? sid : null]);
      logouts.set(key, { clientId, sub: accountId, sid });
    }
  }
  return [...logouts.values()];
}

export function propagateLogouts(provider: Provider, store: ArtifactStore, deliveries: LogoutDeliveries, logger: Logger): void {
  const model = provider.Client.prototype as unknown as { backchannelLogout(this: Client, sub: string, sid: string): Promise<void> };
  model.backchannelLogout = async function queueBackchannelLogout(sub, sid) {
    await deliveries.enqueue([{ clientId: this.clientId, sub, sid }]);
  };
  store.onSessionsEnded(async (sessions) => {
    try {
      await deliveries.enqueue(await logoutsFor(provider, sessions));
    } catch (error) {
      logger.error({ err: error, sessions: sessions.length }, 'back-channel logout: could not queue the deliveries of ended sessions');
    }
  });
}
