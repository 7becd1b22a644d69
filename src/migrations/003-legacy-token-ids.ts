/**
 * Counts the live opaque tokens whose ids are 43 characters long: issued before ids told their
 * model by their length (adapters/token-ids.ts), they are why the adapter still looks every
 * 43-character token up in all three collections. Such an id cannot be renamed, since the id is
 * the token its client holds, so this migration changes nothing: it records how many are left and
 * when the last of them expires (`liveTokens`, `lastExpiresAt`), which says from when on the
 * adapter may stop looking them up. Counting again changes nothing either.
 *
 * On FerretDB the filter reads each of the three collections whole (only `_id` equality has an
 * index there), once.
 */
import type { Migration } from './types.ts';

const LEGACY_ID = /^[A-Za-z0-9_-]{43}$/;
const MODELS = ['AccessToken', 'ClientCredentials', 'RefreshToken'];

export const migration: Migration = {
  id: '003-legacy-token-ids',
  description: 'Count the live opaque tokens with 43-character ids (from before ids named their model) and record when the last one expires',
  async up({ connection }) {
    const now = Date.now();
    let liveTokens = 0;
    let last: number | undefined;
    for (const model of MODELS) {
      const cursor = connection.collection<{ _id: string; expiresAt?: Date }>(`oidc_${model.toLowerCase()}`)
        .find({ _id: { $regex: LEGACY_ID } }, { projection: { _id: 1, expiresAt: 1 }, batchSize: 1000 });
      for await (const token of cursor) {
        const expiresAt = token.expiresAt?.getTime();
        if (expiresAt !== undefined && expiresAt <= now) continue;
        liveTokens++;
        // Opaque tokens always expire; one without an expiry would keep the lookups needed for good.
        last = expiresAt === undefined ? Number.POSITIVE_INFINITY : Math.max(last ?? 0, expiresAt);
      }
    }
    const lastExpiresAt = last === undefined ? null : Number.isFinite(last) ? new Date(last).toISOString() : 'never';
    return { liveTokens, lastExpiresAt };
  },
};
