/**
 * Every migration, in the order they run. To add one: write `NNN-what-it-does.ts` (next number,
 * rules in runner.ts) exporting `migration`, and append it here. An applied migration is never
 * edited or removed: its record stays in every database it ran on.
 */
import { migration as legacyPointers } from './001-legacy-pointers.ts';
import { migration as legacyConsumedMarkers } from './002-legacy-consumed-markers.ts';
import { migration as legacyTokenIds } from './003-legacy-token-ids.ts';
import type { Migration } from './types.ts';

export const MIGRATIONS: readonly Migration[] = [
  legacyPointers,
  legacyConsumedMarkers,
  legacyTokenIds,
];
