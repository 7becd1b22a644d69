/**
 * The standard profile claims an account may carry (OpenID Connect Core 1.0, section 5.1), and
 * their validation. Every value is what a relying party will show or follow, so: trimmed, bounded,
 * no control characters, URLs absolute https, locale a canonical BCP 47 tag, zoneinfo an IANA zone.
 * An empty value clears the claim.
 */
export const PROFILE_FIELDS = [
  'name', 'given_name', 'family_name', 'preferred_username', 'nickname', 'picture', 'website', 'locale', 'zoneinfo',
] as const;

export type ProfileField = (typeof PROFILE_FIELDS)[number];

/** Values as stored: a field is either set or absent. */
export type Profile = Partial<Record<ProfileField, string>>;

/** A change: a string sets (empty clears), an absent field stays as it is. */
export type ProfileChanges = Partial<Record<ProfileField, string>>;

const LABELS: Readonly<Record<ProfileField, string>> = {
  name: 'Name', given_name: 'Given name', family_name: 'Family name', preferred_username: 'Preferred username',
  nickname: 'Nickname', picture: 'Picture URL', website: 'Website', locale: 'Language (locale)', zoneinfo: 'Time zone',
};

export const MAX_LENGTH: Readonly<Record<ProfileField, number>> = {
  name: 100, given_name: 100, family_name: 100, preferred_username: 64, nickname: 64,
  picture: 2048, website: 2048, locale: 35, zoneinfo: 64,
};

// C0/C1 controls and the line/paragraph separators: they break display and logs downstream.
const CONTROL = /[\p{Cc}\u2028\u2029]/u;
// IANA names are ASCII letters, digits and "_+-/" ("America/Port-au-Prince", "Etc/GMT+5"); this
// also keeps out the UTC offsets ("+01:00") that Intl accepts besides names.
const ZONE_NAME = /^[A-Za-z][A-Za-z0-9_+/-]*$/;

/** The value to store, or a sentence saying what is wrong with it. */
type Checked = { value: string } | { problem: string };

function httpsUrl(field: 'picture' | 'website', label: string, input: string): Checked {
  const url = URL.parse(input);
  if (!url || url.protocol !== 'https:' || !url.hostname) return { problem: `${label} must be an absolute https:// address.` };
  if (url.username || url.password) return { problem: `${label} must not contain a user name or password.` };
  if (url.href.length > MAX_LENGTH[field]) return { problem: `${label} is too long.` };
  return { value: url.href };
}

function locale(input: string): Checked {
  try {
    const [canonical] = Intl.getCanonicalLocales(input);
    if (canonical) return { value: canonical };
  } catch {
    // RangeError: not a well-formed BCP 47 tag.
  }
  return { problem: 'Language must be a BCP 47 language tag such as "en", "en-GB" or "pt-BR".' };
}

function zoneinfo(input: string): Checked {
  if (ZONE_NAME.test(input)) {
    try {
      // Accepts every IANA name and alias, in any case; the resolved name has the canonical case.
      return { value: new Intl.DateTimeFormat('en', { timeZone: input }).resolvedOptions().timeZone };
    } catch {
      // RangeError: not a time zone this runtime knows.
    }
  }
  return { problem: 'Time zone must be an IANA time zone such as "Europe/Paris" or "UTC".' };
}

function checkField(field: ProfileField, raw: string): Checked {
  const input = raw.trim();
  const label = LABELS[field];
  if (input === '') return { value: '' };
  if (CONTROL.test(input)) return { problem: `${label} must not contain control characters.` };
  if (input.length > MAX_LENGTH[field]) return { problem: `${label} must be at most ${MAX_LENGTH[field]} characters.` };
  switch (field) {
    case 'picture':
    case 'website':
      return httpsUrl(field, label, input);
    case 'locale':
      return locale(input);
    case 'zoneinfo':
      return zoneinfo(input);
    default:
      return { value: input };
  }
}

/**
 * Validates a change. `set` holds the values to store, `clear` the fields emptied; `problems` the
 * sentences to show (nothing is stored when there is one).
 */
export function checkProfile(changes: ProfileChanges): { set: Profile; clear: ProfileField[]; problems: string[] } {
  const set: Profile = {};
  const clear: ProfileField[] = [];
  const problems: string[] = [];
  for (const field of PROFILE_FIELDS) {
    const raw = changes[field];
    if (raw === undefined) continue;
    const checked = checkField(field, raw);
    if ('problem' in checked) problems.push(checked.problem);
    else if (checked.value === '') clear.push(field);
    else set[field] = checked.value;
  }
  return { set, clear, problems };
}
