/**
 * The documents API under /api/v1, driven with a client_credentials JWT access token: seeding
 * (BENCH_DOCUMENTS documents of ~1 KB through the API), and the count of the provider key set
 * fetches the API logs (it verifies tokens against a cached JWKS: this should stay near 1, not one
 * per request).
 */
import fs from 'node:fs';
import mongoose from 'mongoose';
import { say } from './options.ts';
import { basicAuth, FORM } from './sample.ts';

const SEED_CONCURRENCY = 4;
/** The message the documents API logs whenever it fetches the provider's JWKS (src/documents/token.ts). */
const JWKS_FETCH_MESSAGE = 'fetching the provider key set';

export interface Credentials { client_id: string; client_secret?: string | undefined }

/** A client_credentials token response; `scope` is the form field (none: the client's default). */
export async function clientCredentialsToken(issuer: string, client: Credentials, scope?: string): Promise<string> {
  const response = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(client.client_id, client.client_secret!), ...FORM },
    body: new URLSearchParams({ grant_type: 'client_credentials', ...(scope ? { scope } : {}) }),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`client_credentials at ${issuer}: token endpoint answered ${response.status}: ${text.slice(0, 300)}`);
  const token = (JSON.parse(text) as { access_token?: unknown }).access_token;
  if (typeof token !== 'string') throw new Error(`client_credentials at ${issuer}: no access token in ${text.slice(0, 300)}`);
  return token;
}

/** A client_credentials JWT access token for the documents API (the default resource for its scopes). */
export async function documentsAccessToken(issuer: string, client: Credentials): Promise<string> {
  const token = await clientCredentialsToken(issuer, client, 'documents:read documents:write');
  if (token.split('.').length !== 3) throw new Error(`documents access token: expected a JWT access token, got an opaque token of ${token.length} characters`);
  return token;
}

/** The title of the documents doc_create makes (seeded ones have their own). */
export const CREATED_TITLE = 'bench create';

/**
 * Removes what doc_create made, straight from the database, after each of its runs. On FerretDB a
 * list reads every document in the collection (docs/benchmarks.md: 49 req/s at 200 documents, 9
 * at 1,000), so without this each round's doc_get and doc_list would measure a bigger collection
 * than the one before, and the rounds would not be alike.
 */
export async function createdDocumentsRemover(mongoUri: string) {
  const connection = await mongoose.createConnection(mongoUri, { autoIndex: false }).asPromise();
  return {
    async remove(): Promise<number> {
      return (await connection.collection('documents').deleteMany({ title: CREATED_TITLE })).deletedCount;
    },
    close: () => connection.close(),
  };
}

/** A document of ~1 KB of content and two tags. */
export function documentBody(title: string) {
  const sentence = 'The quick brown fox jumps over the lazy dog while the benchmark measures the documents API. ';
  return { title, content: sentence.repeat(Math.ceil(1024 / sentence.length)).slice(0, 1024), tags: ['bench', 'load-test'] };
}

/** Creates `count` documents through the API; returns the id of one of them. */
export async function seedDocuments(issuer: string, token: string, count: number): Promise<string> {
  let next = 0;
  let kept: string | undefined;
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, async () => {
    while (next < count) {
      const n = next++;
      const response = await fetch(`${issuer}/api/v1/documents`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(documentBody(`bench seed ${n}`)),
      });
      const text = await response.text();
      if (response.status !== 201) throw new Error(`seeding documents: POST /api/v1/documents answered ${response.status}: ${text.slice(0, 300)}`);
      const { id } = JSON.parse(text) as { id?: unknown };
      if (typeof id !== 'string') throw new Error(`seeding documents: the answer has no id: ${text.slice(0, 300)}`);
      kept ??= id;
    }
  }));
  const check = await fetch(`${issuer}/api/v1/documents/${kept}`, { headers: { authorization: `Bearer ${token}` } });
  if (check.status !== 200) throw new Error(`seeding documents: GET of a seeded document answered ${check.status}`);
  say(`seeded ${count} documents`);
  return kept!;
}

/**
 * How many JWKS fetches the provider logged between two instants; also reports (on stderr) the
 * first few errors it logged in that window, which would otherwise go unseen.
 */
export function countJwksFetches(file: string, from: number, to: number): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  let fetches = 0;
  let failures = 0;
  for (let start = 0; start < text.length;) {
    const end = text.indexOf('\n', start);
    const line = text.slice(start, end === -1 ? text.length : end);
    start = end === -1 ? text.length : end + 1;
    const interesting = line.includes(JWKS_FETCH_MESSAGE) || /"level":(5|6)0\b/.test(line);
    if (!interesting) continue;
    let entry: { level?: number; time?: number; msg?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue;
    }
    if (typeof entry.time !== 'number' || entry.time < from || entry.time > to) continue;
    if (entry.msg === JWKS_FETCH_MESSAGE) fetches += 1;
    if ((entry.level ?? 0) >= 50 && (failures += 1) <= 3) say(`provider logged an error: ${line.slice(0, 500)}`);
  }
  if (failures > 3) say(`provider logged ${failures} errors during the documents scenarios`);
  return fetches;
}
