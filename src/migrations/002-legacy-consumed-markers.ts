/**
 * Drops `oidc_consumed`, where the earliest versions recorded the single use of codes and refresh
 * tokens (`{_id: "<Model>:<id>"}`). A use has since been recorded as `consumed:<id>` beside the
 * artifact, in its own collection, and nothing reads `oidc_consumed`: its markers only wait there
 * to expire (indexed and swept meanwhile). Dropping is the whole migration, so running it again
 * changes nothing. Instances of those earliest versions must be stopped first (the README's
 * upgrade notes already ask so: they would decide single use in another place).
 */
import { dropIfPresent } from './helpers.ts';
import type { Migration } from './types.ts';

export const migration: Migration = {
  id: '002-legacy-consumed-markers',
  description: 'Drop oidc_consumed, the single-use markers of the earliest versions, which nothing reads any more',
  async up({ connection }) {
    return { dropped: await dropIfPresent(connection, 'oidc_consumed') };
  },
};
