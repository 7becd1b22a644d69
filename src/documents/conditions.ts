/** RFC 9110 preconditions on a document's ETag. */

/** If-Match: "*" or a list of strong entity tags; weak tags never match. */
export function ifMatchSatisfied(header: string, etag: string): boolean {
  if (header.trim() === '*') return true;
  return header.split(',').map((tag) => tag.trim()).includes(etag);
}

/** If-None-Match for GET: true (answer 304) when a listed tag matches, weakly. */
export function ifNoneMatchSatisfied(header: string, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  const opaque = (tag: string) => tag.trim().replace(/^W\//, '');
  return header.split(',').map(opaque).includes(opaque(etag));
}
