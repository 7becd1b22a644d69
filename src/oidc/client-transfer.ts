/**
 * Clients as code: `client export` writes the registry as a JSON document (without secrets) and
 * `client import` makes the registry match one, idempotently. A document's client is read into
 * the same ClientInput the CLI's create and update build, so an imported client passes exactly
 * their rules (ClientService.metadataFrom), never stored as raw metadata. Dynamic registration
 * (registration.ts) reads its requests through the same table.
 */
import { z } from 'zod';
import { AppError } from '../http/errors.ts';
import { AUTH_METHODS, type ClientInput, type ClientService, type StoredClient } from './clients.ts';
import { ID_TOKEN_CLAIMS } from './client-metadata.ts';
import { ACCOUNT_CONSOLE_CLIENT_ID } from './provider.ts';

type InputKey = keyof ClientInput;

/**
 * The metadata (RFC 7591 names, and our own) that a client document may hold, with the input
 * each becomes. A field added to ClientInput needs a line here, or export leaves it out and
 * import refuses it.
 */
const FIELDS = {
  client_name: { input: 'name', schema: z.string() },
  redirect_uris: { input: 'redirectUris', schema: z.array(z.string()) },
  post_logout_redirect_uris: { input: 'postLogoutRedirectUris', schema: z.array(z.string()) },
  grant_types: { input: 'grantTypes', schema: z.array(z.string()) },
  scope: { input: 'scope', schema: z.string() },
  application_type: { input: 'applicationType', schema: z.enum(['web', 'native']) },
  id_token_signed_response_alg: { input: 'idTokenSigningAlg', schema: z.string() },
  token_endpoint_auth_method: { input: 'tokenEndpointAuthMethod', schema: z.enum(AUTH_METHODS) },
  jwks_uri: { input: 'jwksUri', schema: z.string() },
  jwks: { input: 'jwks', schema: z.unknown() },
  require_mfa: { input: 'requireMfa', schema: z.boolean() },
  pkce_required: { input: 'pkceRequired', schema: z.boolean() },
  first_party: { input: 'firstParty', schema: z.boolean() },
  id_token_claims: { input: 'idTokenClaims', schema: z.enum(ID_TOKEN_CLAIMS) },
  introspect_for: { input: 'introspectFor', schema: z.array(z.string()) },
  dpop_bound_access_tokens: { input: 'requireDpop', schema: z.boolean() },
  backchannel_logout_uri: { input: 'backchannelLogoutUri', schema: z.string() },
  backchannel_logout_session_required: { input: 'backchannelLogoutSessionRequired', schema: z.boolean() },
} satisfies Record<string, { input: InputKey; schema: z.ZodType }>;

export type ClientField = keyof typeof FIELDS;
export const CLIENT_FIELDS = Object.keys(FIELDS) as ClientField[];

function invalid(message: string): AppError {
  return new AppError('invalid_client_metadata', message);
}

/**
 * The input that client metadata describes. `unknown: 'refuse'` (import) fails on a field this
 * registry does not know, so nothing in a document is silently lost; 'ignore' (RFC 7591
 * registration, whose clients may send anything) leaves such fields out. Null is "not set".
 */
export function inputFromMetadata(metadata: Record<string, unknown>, options: { unknown: 'refuse' | 'ignore'; skip?: readonly string[] }): ClientInput {
  const input: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(metadata)) {
    if (key === 'client_id' || options.skip?.includes(key)) continue;
    const field = FIELDS[key as ClientField];
    if (!field) {
      if (options.unknown === 'refuse') throw invalid(`"${key}" is not client metadata this provider manages (${CLIENT_FIELDS.join(', ')})`);
      continue;
    }
    if (value === null || value === undefined) continue;
    const parsed = field.schema.safeParse(value);
    if (!parsed.success) throw invalid(`"${key}" has the wrong type or value`);
    input[field.input] = parsed.data;
  }
  return input as ClientInput;
}

/** A stored client as a document entry: its id and managed metadata, never its secret. */
export function exportedClient(client: Partial<StoredClient>): Record<string, unknown> {
  const entry: Record<string, unknown> = { client_id: client.client_id };
  for (const key of CLIENT_FIELDS) {
    const value = (client as Record<string, unknown>)[key];
    if (value !== undefined && value !== null) entry[key] = value;
  }
  return entry;
}

export interface ClientsDocument {
  clients: Record<string, unknown>[];
}

/** Every client but the built-in one (or those asked for), as a document for `client import`. */
export async function exportClients(clients: ClientService, ids: readonly string[] = []): Promise<ClientsDocument> {
  // Without ids: the clients an administrator manages, not those that registered themselves.
  const listed = ids.length ? await Promise.all(ids.map((id) => clients.require(id))) : (await clients.list()).filter((c) => !c.registered_dynamically);
  return { clients: listed.filter((c) => c.client_id !== ACCOUNT_CONSOLE_CLIENT_ID).map(exportedClient) };
}

/** Ids written by the CLI are hex; imported ones may be any that stay out of a command line's way. */
const CLIENT_ID = /^[A-Za-z0-9_~.][A-Za-z0-9_~.-]{0,127}$/;

const documentSchema = z.object({
  clients: z.array(z.looseObject({ client_id: z.string().regex(CLIENT_ID) })).max(10_000),
}).strict();

export type ImportOutcome = 'created' | 'updated' | 'unchanged' | 'deleted';

export interface ImportResult {
  client_id: string;
  outcome: ImportOutcome;
  /** Only for a client that was given a secret by this import (printed once). */
  client_secret?: string;
}

function readDocument(document: unknown): { id: string; input: ClientInput }[] {
  const parsed = documentSchema.safeParse(document);
  if (!parsed.success) {
    throw invalid('the document must be {"clients": [{"client_id": "...", ...}, ...]} (client ids of letters, digits, and _ ~ . -)');
  }
  const seen = new Set<string>();
  return parsed.data.clients.map((entry) => {
    const id = entry.client_id as string;
    if (seen.has(id)) throw invalid(`client "${id}" appears twice`);
    seen.add(id);
    if (id === ACCOUNT_CONSOLE_CLIENT_ID) throw invalid(`"${id}" is built into the server and cannot be imported`);
    try {
      return { id, input: inputFromMetadata(entry, { unknown: 'refuse' }) };
    } catch (error) {
      throw prefixed(id, error);
    }
  });
}

function prefixed(id: string, error: unknown): unknown {
  return error instanceof AppError ? new AppError(error.code, `client "${id}": ${error.message}`, error.status) : error;
}

/**
 * Makes the registry match the document: missing clients are created, changed ones updated,
 * the rest left alone (a second run reports every client unchanged). Every client is checked
 * before anything is written, so a document with one bad client changes nothing. `prune` also
 * deletes the clients the document does not name (never the built-in one).
 */
export async function importClients(
  clients: ClientService, document: unknown, options: { prune?: boolean } = {},
): Promise<ImportResult[]> {
  const entries = readDocument(document);
  for (const { id, input } of entries) {
    await clients.replace(id, input, { dryRun: true }).catch((error: unknown) => { throw prefixed(id, error); });
  }
  const results: ImportResult[] = [];
  for (const { id, input } of entries) {
    const before = await clients.get(id);
    const { client, outcome } = await clients.replace(id, input);
    const issued = client.client_secret !== undefined && client.client_secret !== before?.client_secret;
    results.push({ client_id: id, outcome, ...(issued ? { client_secret: client.client_secret } : {}) });
  }
  if (options.prune) {
    const named = new Set(entries.map((e) => e.id));
    for (const listed of await clients.list()) {
      const id = listed.client_id as string;
      // Clients that registered themselves (RFC 7591) are not part of the file's truth.
      if (named.has(id) || id === ACCOUNT_CONSOLE_CLIENT_ID || listed.registered_dynamically) continue;
      await clients.delete(id);
      results.push({ client_id: id, outcome: 'deleted' });
    }
  }
  return results;
}
