/**
 * The hosted pages of the device authorization grant (RFC 8628), rendered by our views for
 * oidc-provider's deviceFlow hooks. The flow: the device shows a code and /device (or the
 * verification_uri_complete link, which oidc-provider turns into a form post carrying the code);
 * the user types the code here (code.ejs), confirms the app's name (confirm.ejs), signs in on the
 * ordinary interaction pages, and lands on done.ejs while the device's poll gets its tokens.
 * oidc-provider's forms carry its own xsrf token (checked against its session); our `_csrf`
 * middleware is not involved on these routes.
 * @see https://github.com/panva/node-oidc-provider/blob/main/docs/README.md#featuresdeviceflow
 */
import type { Client, Configuration, KoaContextWithOIDC } from 'oidc-provider';

type DeviceFlow = NonNullable<NonNullable<Configuration['features']>['deviceFlow']>;
type Render = (view: string, locals: Record<string, unknown>) => Promise<void>;

/** Pages are rendered by the outer app's views (src/http/views.ts); mounting shares its ctx with the provider. */
function render(ctx: KoaContextWithOIDC): Render {
  return (ctx as unknown as { render: Render }).render;
}

/** The user code mask oidc-provider fills with its base-20 charset (BCDFGHJKLMNPQRSTVWXZ): about 2^34.6 codes. */
export const USER_CODE_MASK = '****-****';

/** What the input page says after oidc-provider refused a submitted code (its re-render errors, by name). */
const REFUSALS: Record<string, string> = {
  NoCodeError: 'Enter the code shown on your device.',
  NotFoundError: 'That code is not valid. Check it against your device and try again.',
  ExpiredError: 'That code has expired. Start again on your device to get a new one.',
  AlreadyUsedError: 'That code has already been used. Start again on your device to get a new one.',
};

/** The xsrf token oidc-provider put in its own form for this page (bound to its session). */
function xsrfOf(form: string): string {
  const token = /name="xsrf" value="([^"]*)"/.exec(form)?.[1];
  // Fail loudly (a 500, in tests) if an upgrade of oidc-provider changes its form.
  if (token === undefined) throw new Error('oidc-provider device form without an xsrf token: check src/devices/pages.ts against this version');
  return token;
}

const clientName = (client: Client | undefined) => client?.clientName ?? client?.clientId ?? 'an app';

export const deviceFlowPages: Pick<DeviceFlow, 'userCodeInputSource' | 'userCodeConfirmSource' | 'successSource'> = {
  userCodeInputSource: async (ctx, form, _out, err) => {
    const name = err?.name ?? '';
    const refusal = REFUSALS[name];
    const aborted = name === 'AbortedError';
    // Anything else (the app was deleted, a server error) keeps the status oidc-provider chose.
    const error = refusal ?? (err && !aborted ? 'This sign-in could not be completed. Start again on your device.' : undefined);
    const status = refusal ? 400 : ctx.status;
    await render(ctx)('device/code', {
      title: 'Connect a device',
      action: ctx.oidc.urlFor('code_verification'),
      xsrf: xsrfOf(form),
      userCode: refusal ? String((err as { userCode?: unknown }).userCode ?? '') : '',
      placeholder: USER_CODE_MASK.replace(/\*/g, 'X'),
      error,
      notice: aborted ? 'The sign-in was cancelled: your device will not be signed in. To try again, start on your device.' : undefined,
    });
    // Rendering sets 200; a refused code is the client's error.
    ctx.status = err ? status : 200;
  },
  userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
    await render(ctx)('device/confirm', { title: 'Confirm your device', clientName: clientName(client), userCode, confirmForm: form });
  },
  successSource: async (ctx) => {
    await render(ctx)('device/done', { title: 'Device signed in', clientName: clientName(ctx.oidc.client) });
  },
};
