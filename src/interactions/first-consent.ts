/**
 * An account's first consent to an app, asked on the interaction of the password itself.
 *
 * oidc-provider's own order is: the password ends the login interaction, the browser goes back to
 * /auth to resume, oidc-provider finds consent missing and starts a second interaction, and the
 * browser comes to the consent page. When no grant exists yet for the account and the app, what
 * consent must cover is plainly the OIDC scopes requested, so the login answer keeps the login
 * on the interaction and sends the browser (303) straight to the consent page of the same
 * interaction; its answer finishes both at once. That spares two requests and their reads.
 *
 * Anything less plain is left to oidc-provider's consent step, which decides from the grant it
 * loads: an existing grant (what is missing from it), the claims parameter, resource indicators
 * and documents scopes (resource scopes, some for admins only), rich authorization requests, and
 * a browser already signed in. Should it still find something missing at the resume, it asks
 * again on its own consent page: a mistake here can cost a question, never grant more than the
 * page showed, since the grant is made from the scopes stored on the interaction, not the form.
 * A grant revoked between the password and the resume (the read handed over as `knownGrant`)
 * lets the resume issue a code, which the token endpoint then refuses (it reads the grant).
 */
import type { Interaction, InteractionResults, Provider } from 'oidc-provider';
import type { ArtifactStore, StoredGrant } from '../../adapters/mongodb.ts';
import { isDocumentsScope, SCOPES } from '../oidc/provider.ts';

type Login = NonNullable<InteractionResults['login']>;

/** Kept on the interaction's result between the password and the consent answer. */
export interface PendingConsent {
  scopes: string[];
}

export type FirstConsentDecision = { ask: string[] } | { known: StoredGrant } | undefined;

export function firstConsent({ provider, store }: { provider: Provider; store: ArtifactStore }) {
  return {
    /**
     * `ask`: the scopes this sign-in's first consent covers. `known`: the account's grant to the
     * app, for oidc-provider's consent step to judge. Undefined: oidc-provider decides alone.
     */
    async decide(interaction: Interaction, accountId: string): Promise<FirstConsentDecision> {
      const { params, session } = interaction;
      if (session || params.claims !== undefined || params.authorization_details !== undefined || params.resource !== undefined) return undefined;
      const requested = String(params.scope ?? '').split(' ').filter(Boolean);
      if (requested.some(isDocumentsScope)) return undefined;
      const scopes = requested.filter((scope) => (SCOPES as readonly string[]).includes(scope));
      if (scopes.length === 0) return undefined;
      const known = await store.storedGrantFor(accountId, String(params.client_id));
      return known ? { known } : { ask: scopes };
    },

    /** The consent waiting on this interaction since its password, if any. */
    pending(interaction: Interaction): { login: Login; consent: PendingConsent } | undefined {
      const result = interaction.result as (InteractionResults & { pendingConsent?: PendingConsent }) | undefined;
      return result?.login && result.pendingConsent ? { login: result.login, consent: result.pendingConsent } : undefined;
    },

    /** Forgets a consent held on this interaction (a new password was given there). */
    async drop(interaction: Interaction): Promise<void> {
      if (!this.pending(interaction)) return;
      interaction.result = undefined;
      await interaction.save(interaction.exp - Math.floor(Date.now() / 1000));
    },

    /**
     * Keeps the login on the interaction until the consent page is answered. Signing the account
     * out everywhere (a password reset, an administrator) deletes such interactions with its
     * sessions (ArtifactStore.revokeAccount), as a consent interaction of oidc-provider's would
     * fail with its session.
     */
    async hold(interaction: Interaction, login: Login, scopes: string[]): Promise<void> {
      interaction.result = { login, pendingConsent: { scopes } satisfies PendingConsent };
      await interaction.save(interaction.exp - Math.floor(Date.now() / 1000));
    },

    /**
     * The account's grant to the app for these scopes; the result that finishes login and consent
     * together. A grant given meanwhile (another tab) gets the scopes added, not a second grant.
     */
    async grant(interaction: Interaction, login: Login, scopes: string[]): Promise<InteractionResults> {
      const clientId = String(interaction.params.client_id);
      const existing = await store.grantIdFor(login.accountId, clientId);
      const grant = (existing ? await provider.Grant.find(existing) : undefined)
        ?? new provider.Grant({ accountId: login.accountId, clientId });
      grant.addOIDCScope(scopes.join(' '));
      return { login, consent: { grantId: await grant.save() } };
    },
  };
}
