/**
 * The table's scenarios, against the provider ("ours") and, for client_credentials and
 * introspection, against bare oidc-provider. Each one prepares what it needs outside the measured
 * window (a fresh token: the bench may outlive a token's 10 minutes) and returns the run to measure.
 */
import autocannon from 'autocannon';
import { clientCredentialsToken, CREATED_TITLE, documentBody, documentsAccessToken, type Credentials } from './documents.ts';
import type { Processes } from './measure.ts';
import { say, type ScenarioName } from './options.ts';
import type { Target } from './report.ts';
import { basicAuth, cannon, FORM, type Sample } from './sample.ts';
import { signIns, signInOnce, type SignInTarget } from './signin.ts';

/** after: run once the run is measured (a check, a clean-up); returns errors to add to the run's. */
export interface Prepared { run: () => Promise<Sample>; after?: () => Promise<number> }
export interface Scenario { key: ScenarioName; label: string; system: 'ours' | 'bare'; target?: Target; processes: Processes; prepare: () => Promise<Prepared> }

/** A server to drive: its issuer, the processes to measure, and an opaque client_credentials client. */
export interface System { issuer: string; processes: Processes; service: Credentials }

export interface Ours extends System {
  documentsClient: Credentials;
  signIn: SignInTarget;
  /** Hands out signin_mfa sign-ins (see signin.ts); undefined when signin_mfa is not selected. */
  mfaSignIn?: ((deadline: number) => Promise<(() => Promise<void>) | undefined>) | undefined;
  /** A seeded document to GET; undefined when no documents scenario is selected. */
  documentId?: string | undefined;
  /** Removes the documents doc_create made (documents.ts); returns how many. */
  removeCreatedDocuments?: (() => Promise<number>) | undefined;
}

const post = (issuer: string, path: string, client: Credentials, body: string) => ({
  url: `${issuer}${path}`, method: 'POST' as const, headers: { authorization: basicAuth(client.client_id, client.client_secret!), ...FORM }, body,
});

/** The opaque token of `system`'s service client, and a check that introspection calls it active. */
async function introspected(system: System, label: string): Promise<Prepared> {
  const token = await clientCredentialsToken(system.issuer, system.service, 'openid');
  const request = post(system.issuer, '/token/introspection', system.service, new URLSearchParams({ token, token_type_hint: 'access_token' }).toString());
  // A sample before and after the run: a 200 saying active: false would otherwise pass for a success.
  const check = async (): Promise<number> => {
    const answer = await fetch(request.url, request);
    const text = await answer.text();
    if (answer.status === 200 && (JSON.parse(text) as { active?: unknown }).active === true) return 0;
    say(`${label}: the sampled introspection answer is not active: true (${answer.status} ${text.slice(0, 200)})`);
    return 1;
  };
  if (await check()) throw new Error(`${label}: introspection does not describe the token it is to be measured with`);
  return { run: () => cannon(label, request), after: check };
}

const prepared = (run: () => Promise<Sample>) => async (): Promise<Prepared> => ({ run });

/** Both systems' client_credentials and introspection scenarios, `bare` right after ours. */
function protocolScenarios(system: System, kind: 'ours' | 'bare'): Scenario[] {
  const label = (name: string) => (kind === 'bare' ? `${name} (bare oidc-provider)` : name);
  return [
    {
      key: 'client_credentials', label: label('client_credentials, opaque'), system: kind, processes: system.processes,
      ...(kind === 'ours' ? { target: { cpuMs: 1.0, commands: 1 } } : {}),
      prepare: prepared(() => cannon(label('client_credentials'), post(system.issuer, '/token', system.service, 'grant_type=client_credentials&scope=openid'))),
    },
    {
      key: 'introspection', label: label('introspection (opaque cc token)'), system: kind, processes: system.processes,
      ...(kind === 'ours' ? { target: { cpuMs: 1.2, commands: 1 } } : {}),
      prepare: () => introspected(system, label('introspection')),
    },
  ];
}

export function scenarios(ours: Ours, bare: System | undefined): Scenario[] {
  const { issuer, processes } = ours;
  const cannonOf = (label: string, request: autocannon.Options) => prepared(() => cannon(label, request));
  const documents = (label: string, request: (bearer: { authorization: string }) => autocannon.Options, after?: () => Promise<number>) => async (): Promise<Prepared> => {
    const bearer = { authorization: `Bearer ${await documentsAccessToken(issuer, ours.documentsClient)}` };
    return { run: () => cannon(label, request(bearer)), ...(after ? { after } : {}) };
  };
  const removeCreated = async () => {
    await ours.removeCreatedDocuments?.();
    return 0;
  };
  const [oursCc, oursIntrospection] = protocolScenarios(ours, 'ours');
  const [bareCc, bareIntrospection] = bare ? protocolScenarios(bare, 'bare') : [];
  const list: (Scenario | undefined)[] = [
    { key: 'discovery', label: 'discovery', system: 'ours', processes, prepare: cannonOf('discovery', { url: `${issuer}/.well-known/openid-configuration` }) },
    { key: 'jwks', label: 'JWKS', system: 'ours', processes, prepare: cannonOf('JWKS', { url: `${issuer}/jwks` }) },
    oursCc, bareCc,
    {
      key: 'client_credentials_jwt', label: 'client_credentials, JWT (documents scopes)', system: 'ours', processes, target: { cpuMs: 0.35 },
      prepare: cannonOf('client_credentials_jwt', post(issuer, '/token', ours.documentsClient, 'grant_type=client_credentials&scope=documents%3Aread%20documents%3Awrite')),
    },
    oursIntrospection, bareIntrospection,
    {
      // Consent is given by the first sign-in; every later one has it (issue 10: <= 15 commands).
      key: 'signin', label: 'complete sign-ins', system: 'ours', processes, target: { cpuMs: 55, commands: 15 },
      prepare: prepared(() => signIns('signin', async () => () => signInOnce(ours.signIn, 'bench@example.com'))),
    },
    ...(ours.mfaSignIn ? [{
      key: 'signin_mfa' as const, label: 'complete sign-ins with TOTP', system: 'ours' as const, processes, target: { rps: 25, unit: '/s' },
      prepare: prepared(() => signIns('signin_mfa', ours.mfaSignIn!)),
    }] : []),
    ...(ours.documentId === undefined ? [] : [
      {
        key: 'doc_get' as const, label: 'documents: GET by id', system: 'ours' as const, processes, target: { rps: 2000, p99: 50, cpuMs: 0.8 },
        prepare: documents('doc_get', (bearer) => ({ url: `${issuer}/api/v1/documents/${ours.documentId}`, headers: bearer })),
      },
      {
        key: 'doc_list' as const, label: 'documents: list (limit=20)', system: 'ours' as const, processes, target: { rps: 800, p99: 50 },
        prepare: documents('doc_list', (bearer) => ({ url: `${issuer}/api/v1/documents?limit=20`, headers: bearer })),
      },
      {
        // What it creates is removed after each run: the next round reads the same collection.
        key: 'doc_create' as const, label: 'documents: create (~1 KB)', system: 'ours' as const, processes, target: { rps: 500, p99: 50 },
        prepare: documents('doc_create', (bearer) => ({
          url: `${issuer}/api/v1/documents`, method: 'POST', headers: { ...bearer, 'content-type': 'application/json' }, body: JSON.stringify(documentBody(CREATED_TITLE)),
        }), removeCreated),
      },
    ]),
  ];
  return list.filter((s): s is Scenario => s !== undefined);
}
