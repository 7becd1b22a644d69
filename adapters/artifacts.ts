/**
 * What the store (mongodb.ts) and the per-model adapter (mongo-adapter.ts) share: the models and
 * how each is kept, the document shape and its key escaping, the ids of copies and markers that
 * share an artifact's collection, the client cache, and the retry of a lost first upsert.
 */
import mongoose from 'mongoose';
import type { AdapterPayload } from 'oidc-provider';

export const MODEL_NAMES = [
  'Session', 'Interaction', 'AccessToken', 'AuthorizationCode', 'RefreshToken', 'ClientCredentials',
  'Client', 'Grant', 'ReplayDetection', 'PushedAuthorizationRequest', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'RegistrationAccessToken', 'InitialAccessToken',
] as const;
export type ModelName = (typeof MODEL_NAMES)[number];

/** Models whose artifacts carry a grantId and must die with their grant. */
export const GRANTABLE = new Set<string>([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest',
]);

/** Models oidc-provider saves again under the same id (a session on every sign-in, ...). */
export const RESAVED = new Set<string>(['Session', 'Interaction', 'Grant', 'Client', 'DeviceCode']);

/** Secondary keys oidc-provider finds artifacts by; their values never change for an artifact. */
export const SECONDARY_KEYS: Record<string, 'uid' | 'userCode'> = { Session: 'uid', DeviceCode: 'userCode' };

export const copyId = (key: string, value: string) => `${key}:${value}`;
export const memoKey = (model: string, id: string) => `${model}\u0000${id}`;
export const consumedId = (id: string) => `consumed:${id}`;
/** The copy of the one grant an account has given a client (see ArtifactStore.grantIdFor). */
export const grantCopyId = (accountId: string, clientId: string) => `for:${JSON.stringify([accountId, clientId])}`;

export interface ArtifactDocument {
  _id: string;
  payload: AdapterPayload;
  expiresAt?: Date;
  /** Set on a copy stored under a secondary key: the artifact's own id. */
  of?: string;
}

/** A grant found by its account and client, with its document when it was read whole. */
export interface StoredGrant { id: string; doc?: ArtifactDocument }

/** An artifact read back for administration or notification: its id and payload. */
export interface LiveArtifact { id: string; payload: AdapterPayload }

const DUPLICATE_KEY = 11000;

export function isDuplicateKey(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === DUPLICATE_KEY;
}

/**
 * oidc-provider uses resource indicators (URLs) as object keys (a Grant's resources, an
 * Interaction's prompt details). MongoDB refuses field names starting with "$" and FerretDB v1 also
 * refuses "." in them, so payload keys are escaped reversibly on the way in and out:
 * "%" -> "%25", "." -> "%2E", a leading "$" -> "%24". Ordinary keys pass through unchanged.
 */
const ESCAPES: Record<string, string> = { '%': '%25', '.': '%2E', $: '%24' };
const UNESCAPES: Record<string, string> = { '%25': '%', '%2E': '.', '%24': '$' };
const escapeKey = (key: string) => key.replace(/[%.]|^\$/g, (c) => ESCAPES[c]!);
const unescapeKey = (key: string) => key.replace(/%(?:25|2E|24)/g, (c) => UNESCAPES[c]!);

function mapKeys(value: unknown, rename: (key: string) => string): unknown {
  if (Array.isArray(value)) return value.map((item) => mapKeys(item, rename));
  if (value === null || typeof value !== 'object' || Object.getPrototypeOf(value) !== Object.prototype) return value;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[rename(key)] = mapKeys(item, rename);
  return out;
}

/** The stored form of a payload (see escapeKey). */
export const storedPayload = (payload: AdapterPayload) => mapKeys(payload, escapeKey) as AdapterPayload;
/** A payload as oidc-provider wrote it. */
export const readPayload = (stored: AdapterPayload) => mapKeys(stored, unescapeKey) as AdapterPayload;

const notExpired = (expiresAt: Date | undefined) => expiresAt === undefined || expiresAt.getTime() > Date.now();

/** A live artifact (not a copy, a pointer or a consumption marker sharing its collection). */
export function isLive(doc: ArtifactDocument | null | undefined): doc is ArtifactDocument {
  return doc != null && doc.payload !== undefined && doc.of === undefined && notExpired(doc.expiresAt);
}

/** The artifact a copy stands for (its own id, without the mark of a copy). */
export function artifactOfCopy({ of, ...copy }: ArtifactDocument): ArtifactDocument | null {
  return of === undefined ? null : { ...copy, _id: of };
}

export function collectionName(model: string): string {
  return `oidc_${model.toLowerCase()}`;
}

/**
 * Client metadata is read on nearly every protocol request but changes only through the admin
 * CLI, so each instance keeps it for a few seconds. A change made elsewhere (another instance, the
 * CLI) therefore takes up to `ttlMs` to be seen; 0 turns the cache off.
 */
export class ClientCache {
  private readonly entries = new Map<string, { payload: AdapterPayload | undefined; until: number }>();
  private readonly ttlMs: number;
  constructor(ttlMs: number) {
    this.ttlMs = ttlMs;
  }
  get(id: string): { payload: AdapterPayload | undefined } | undefined {
    const entry = this.entries.get(id);
    if (!entry || entry.until < Date.now()) return undefined;
    return entry;
  }
  set(id: string, payload: AdapterPayload | undefined): void {
    if (this.ttlMs <= 0) return;
    if (this.entries.size >= 10_000) this.entries.clear();
    this.entries.set(id, { payload, until: Date.now() + this.ttlMs });
  }
  clear(): void {
    this.entries.clear();
  }

  forget(id: string): void {
    this.entries.delete(id);
  }
}

/**
 * FerretDB's upsert is a read and then an insert: two first writes of one id (two instances
 * creating the built-in client) both insert, and the loser fails on the unique _id (not as
 * 11000). Once more finds the document the other wrote; a real error fails again.
 */
export async function retryLostUpsert<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (!(error instanceof mongoose.mongo.MongoServerError)) throw error;
    return write();
  }
}
