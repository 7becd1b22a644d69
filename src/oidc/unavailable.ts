/**
 * A database outage seen from inside oidc-provider: every storage call and account lookup it
 * makes turns a driver error into its own TemporarilyUnavailable with status 503, which it
 * answers as OAuth's `temporarily_unavailable` (JSON on the back channel, a redirect to the
 * client or our error page on the front channel) instead of a 500 `server_error`.
 */
import { errors, type Adapter } from 'oidc-provider';
import { isUnavailable } from '../http/unavailable.ts';

export function rethrowAsProviderError(error: unknown): never {
  if (!isUnavailable(error) || error instanceof errors.OIDCProviderError) throw error;
  const unavailable = new errors.TemporarilyUnavailable('the service is temporarily unavailable; try again in a few seconds');
  // E() makes every such error a 400; expose keeps the description in the answer.
  Object.assign(unavailable, { status: 503, statusCode: 503, expose: true });
  throw unavailable;
}

export function guardAdapter(adapter: Adapter): Adapter {
  return new Proxy(adapter, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => Promise.resolve().then(() => value.apply(target, args)).catch(rethrowAsProviderError);
    },
  });
}
