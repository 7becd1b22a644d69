/**
 * Replaces the keys of a running oidc-provider. The library fixes its keystore when the Provider
 * is built and exports no way to change it; its own initializer (which validates the JWKS and
 * rebuilds both the keystore and the published key set) is called again on the same instance.
 * That module is internal: test/key-rotation.test.ts fails if an upgrade moves or changes it.
 */
import type { Provider } from 'oidc-provider';
// @ts-expect-error: an internal module without type declarations (see above).
import initializeKeystore from 'oidc-provider/lib/helpers/initialize_keystore.js';
import type { PrivateJwks } from './keys.ts';

export function replaceProviderKeys(provider: Provider, jwks: PrivateJwks): void {
  (initializeKeystore as (this: Provider, jwks: PrivateJwks) => void).call(provider, structuredClone(jwks));
}
