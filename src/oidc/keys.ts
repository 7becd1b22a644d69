/**
 * Signing keys: one key ring shared by every instance and stable across restarts, kept in MongoDB
 * (`signing_keys`, one document per key, the private part sealed with SECRETS_KEY), unless the
 * operator supplies a fixed JWKS (OIDC_JWKS). Development creates the first keys on first start;
 * production refuses to, so keys are always a deliberate operator action (`keys generate`).
 *
 * Rotation without downtime, per algorithm (ES256, EdDSA, RS256; ES256 signs by default):
 * - `next`: published in the JWKS, signs nothing yet (`keys rotate`).
 * - `active`: signs. Promoting a next key (`keys promote`) is refused until it has been published
 *   longer than any cache may keep the JWKS (its max-age plus KEYS_REFRESH_SECONDS for every
 *   instance to publish it), so no relying party meets a kid it has not been able to fetch.
 * - `retiring`: replaced, still published: tokens it signed may still be in use.
 * - `retired`: removed from the JWKS and its private part erased (`keys retire`), refused while
 *   a token it signed could still be valid (the longest signed-token lifetime since it stopped
 *   signing). The document stays, as the record of when.
 */
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import type { Collection, Connection } from 'mongoose';
import type { JWK } from 'oidc-provider';
import type { Config } from '../config.ts';
import { AppError } from '../http/errors.ts';
import { Lease } from '../security/lease.ts';
import { SecretBox } from '../security/secrets.ts';

export interface PrivateJwks { keys: JWK[] }

export const SIGNING_ALGS = ['ES256', 'EdDSA', 'RS256'] as const;
export type SigningAlg = (typeof SIGNING_ALGS)[number];
export type KeyState = 'next' | 'active' | 'retiring' | 'retired';

interface StoredKey {
  _id: string;
  alg: SigningAlg;
  state: KeyState;
  public: JWK;
  /** The private JWK as JSON, sealed (SecretBox); absent once retired. */
  sealed?: string;
  createdAt: Date;
  promotedAt?: Date;
  demotedAt?: Date;
  retiredAt?: Date;
}

/**
 * A whole key set written in one document and then expanded into one document per key: the
 * first keys of a database (`initial`: whoever inserts it first wins, atomically; it stays, its
 * keys removed, so a later insert still loses), and the `current` document of versions before the
 * key ring (its keys in the clear). `current` is left as it was, so an instance of the earlier
 * version can still start during a rolling upgrade; it is deleted when one of its keys retires.
 */
interface StoredSet { _id: 'initial' | 'current'; keys?: (JWK | string)[]; createdAt: Date; expandedAt?: Date }

/**
 * The longest waits any serving instance needs (each records its own at start, `$max`): the CLI
 * may run with other TTL_* values than the servers, and must not retire a key their tokens need.
 */
interface StoredTimings extends KeyTimings { _id: 'timings'; updatedAt: Date }

const SET_IDS = ['initial', 'current'];

export interface KeyTimings {
  /** How long a key must be published before it may sign (seconds). */
  publishSeconds: number;
  /** How long a key must stay published after it stopped signing (seconds). */
  signedLifetimeSeconds: number;
}

/** oidc-provider's clock tolerance (src/oidc/provider.ts) lets a token live this much longer. */
const CLOCK_TOLERANCE_SECONDS = 5;

/**
 * From the server's configuration: published means every instance has re-read the ring and every
 * cache has expired since; a key may still sign on an instance that has not re-read the ring yet.
 * The CLI must run with the server's TTL_* values for these to hold (it reads the same variables).
 */
export function keyTimings(config: Config): KeyTimings {
  const { refreshSeconds, jwksCacheSeconds } = config.keys;
  const longestSigned = Math.max(config.ttl.idToken, config.ttl.accessToken, config.ttl.clientCredentials);
  return { publishSeconds: jwksCacheSeconds + refreshSeconds, signedLifetimeSeconds: longestSigned + refreshSeconds + CLOCK_TOLERANCE_SECONDS };
}

/** The key ring of a database, sealed with the configured SECRETS_KEY. */
export function keyRingFor(connection: Connection, config: Config): KeyRing {
  return new KeyRing(connection, new SecretBox(config.secretsKeys), keyTimings(config));
}

export interface KeyView {
  kid: string;
  alg: SigningAlg;
  state: KeyState;
  createdAt: string;
  promotedAt?: string;
  demotedAt?: string;
  retiredAt?: string;
  /** For a next key: from when `promote` accepts it without --force. */
  promotableAt?: string;
  /** For a retiring key: from when `retire` accepts it without --force. */
  retirableAt?: string;
}

/** A refused key step (a wait not over, a wrong state): the operator's message. */
/** How long one rotation step may hold the lease (it takes a few reads and writes). */
const LEASE_MS = 60_000;
const DAY_MS = 86_400_000;

export class KeyRingError extends AppError {
  constructor(message: string, status = 409) {
    super('key_ring', message, status);
  }
}

const PRIVATE_MEMBERS = new Set(['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv']);
const GENERATORS: Record<SigningAlg, () => KeyObject> = {
  ES256: () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  EdDSA: () => generateKeyPairSync('ed25519').privateKey,
  RS256: () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
};

function newKey(alg: SigningAlg): JWK {
  return { ...(GENERATORS[alg]().export({ format: 'jwk' }) as JWK), alg, use: 'sig', kid: randomBytes(12).toString('base64url') };
}

export function publicJwk(jwk: JWK): JWK {
  return Object.fromEntries(Object.entries(jwk).filter(([member]) => !PRIVATE_MEMBERS.has(member) && member !== 'key_ops')) as JWK;
}

/** One key per algorithm, for a process that only validates and has no keys of its own. */
export function throwawayJwks(): PrivateJwks {
  return { keys: SIGNING_ALGS.map(newKey) };
}

const sealPurpose = (kid: string) => `signing-key:${kid}`;
const SET_PURPOSE = 'signing-key-set';
const iso = (date: Date | undefined) => date?.toISOString();
const after = (date: Date, seconds: number) => new Date(date.getTime() + seconds * 1000);

export class KeyRing {
  private readonly keys: Collection<StoredKey>;
  private readonly sets: Collection<StoredSet>;
  private readonly timingsDoc: Collection<StoredTimings>;
  private readonly box: SecretBox;
  private readonly own: KeyTimings;
  /** One rotation step at a time, whether from the CLI or automatic rotation. */
  private readonly lease: Lease;

  constructor(connection: Connection, box: SecretBox, timings: KeyTimings) {
    this.keys = connection.collection<StoredKey>('signing_keys');
    this.sets = connection.collection('signing_keys') as unknown as Collection<StoredSet>;
    this.timingsDoc = connection.collection('signing_keys') as unknown as Collection<StoredTimings>;
    this.box = box;
    this.own = timings;
    this.lease = new Lease(connection, 'key-rotation', LEASE_MS);
  }

  /** Creates the first keys (one active per algorithm) unless the database has keys. */
  async generate(): Promise<{ created: boolean }> {
    if ((await this.current()).length) return { created: false };
    const set: StoredSet = { _id: 'initial', keys: SIGNING_ALGS.map((alg) => this.box.seal(JSON.stringify(newKey(alg)), SET_PURPOSE)), createdAt: new Date() };
    let created = true;
    try {
      await this.sets.insertOne(set);
    } catch (error) {
      if ((error as { code?: unknown }).code !== 11000) throw error;
      created = false;
    }
    await this.current();
    return { created };
  }

  /** Every key that is not retired, oldest first; expands a set not expanded yet first. */
  async current(): Promise<StoredKey[]> {
    const docs = await this.keys.find({}).toArray();
    const pending = (docs as unknown as StoredSet[]).filter((doc) => SET_IDS.includes(doc._id) && !doc.expandedAt);
    if (pending.length) {
      await this.expand(pending);
      return this.current();
    }
    return docs.filter((doc) => doc.state && doc.state !== 'retired').sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime());
  }

  /**
   * The JWKS for oidc-provider: active keys sign, the others carry `key_ops: ["verify"]` so that
   * oidc-provider only verifies with them (its key selection skips keys not listed for signing).
   * Undefined without an active ES256 key (the default algorithm).
   */
  async privateJwks(): Promise<PrivateJwks | undefined> {
    const keys = await this.current();
    if (!keys.some((k) => k.state === 'active' && k.alg === 'ES256')) return undefined;
    return {
      keys: keys.map((k) => {
        const jwk = JSON.parse(this.box.open(k.sealed!, sealPurpose(k._id))) as JWK;
        return k.state === 'active' ? jwk : { ...jwk, key_ops: ['verify'] };
      }),
    };
  }

  async list(): Promise<KeyView[]> {
    await this.current();
    const timings = await this.timings();
    const docs = await this.keys.find({ state: { $exists: true } }).toArray();
    return docs.sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime()).map((k) => view(k, timings));
  }

  /** A serving instance's waits, kept if longer than those recorded (see StoredTimings). */
  async recordTimings(): Promise<void> {
    await this.timingsDoc.updateOne(
      { _id: 'timings' },
      { $max: { publishSeconds: this.own.publishSeconds, signedLifetimeSeconds: this.own.signedLifetimeSeconds }, $set: { updatedAt: new Date() } },
      { upsert: true },
    );
  }

  /** Adds a next key for each algorithm given (all by default); refused where one is waiting. */
  async rotate(algs: readonly SigningAlg[] = SIGNING_ALGS): Promise<KeyView[]> {
    return this.exclusive(() => this.addNext(algs));
  }

  /**
   * Makes a next key the signing key of its algorithm; the key it replaces starts retiring. The
   * new key is made active before the old one steps down, so an instance that reads the ring in
   * between still has a signing key (both are published).
   */
  async promote(kid: string, options: { force?: boolean; now?: Date } = {}): Promise<KeyView[]> {
    return this.exclusive(() => this.makeActive(kid, options.force === true, options.now ?? new Date()));
  }

  /** Removes a key from the JWKS and erases its private part; never the active one. */
  async retire(kid: string, options: { force?: boolean; now?: Date } = {}): Promise<KeyView> {
    return this.exclusive(() => this.remove(kid, options.force === true, options.now ?? new Date()));
  }

  /**
   * Automatic rotation (KEY_ROTATION_DAYS): promotes next keys published long enough, retires
   * retiring keys whose tokens have run out, and adds a next key where the active one has signed
   * for `rotationDays`. Under the lease; nothing when another process holds it.
   */
  async rotateIfDue(rotationDays: number, now = new Date()): Promise<string[]> {
    const done = await this.lease.run(async () => {
      const steps: string[] = [];
      for (const key of await this.list()) {
        if (key.state === 'next' && now >= new Date(key.promotableAt!)) {
          await this.makeActive(key.kid, false, now);
          steps.push(`promote:${key.kid}`);
        } else if (key.state === 'retiring' && key.retirableAt && now >= new Date(key.retirableAt)) {
          await this.remove(key.kid, false, now);
          steps.push(`retire:${key.kid}`);
        }
      }
      const keys = await this.list();
      const due = keys.filter((k) => k.state === 'active' && now.getTime() - new Date(k.promotedAt ?? k.createdAt).getTime() >= rotationDays * DAY_MS)
        .map((k) => k.alg).filter((alg) => !keys.some((k) => k.alg === alg && k.state === 'next'));
      if (due.length) steps.push(...(await this.addNext(due)).map((k) => `rotate:${k.kid}`));
      return steps;
    }, now);
    return done?.value ?? [];
  }

  /** Seals every private key again with the first SECRETS_KEY; returns how many changed. */
  async reseal(): Promise<number> {
    let changed = 0;
    for (const key of await this.current()) {
      if (!key.sealed || !this.box.needsReseal(key.sealed)) continue;
      const plain = this.box.open(key.sealed, sealPurpose(key._id));
      await this.keys.updateOne({ _id: key._id, sealed: key.sealed }, { $set: { sealed: this.box.seal(plain, sealPurpose(key._id)) } });
      changed += 1;
    }
    return changed;
  }

  private async exclusive<T>(step: () => Promise<T>): Promise<T> {
    const done = await this.lease.run(step);
    if (!done) throw new KeyRingError('another key rotation step is running (automatic rotation, or another operator): try again in a minute');
    return done.value;
  }

  private async addNext(algs: readonly SigningAlg[]): Promise<KeyView[]> {
    const existing = await this.current();
    const waiting = algs.filter((alg) => existing.some((k) => k.alg === alg && k.state === 'next'));
    if (waiting.length) throw new KeyRingError(`a next key is already published for ${waiting.join(', ')}: promote or retire it first`);
    const inactive = algs.filter((alg) => !existing.some((k) => k.alg === alg && k.state === 'active'));
    if (inactive.length) throw new KeyRingError(`no active ${inactive.join(', ')} key to rotate from: run \`keys generate\` first`);
    const created: StoredKey[] = [];
    for (const alg of algs) {
      const jwk = newKey(alg);
      const doc: StoredKey = { _id: jwk.kid!, alg, state: 'next', public: publicJwk(jwk), sealed: this.box.seal(JSON.stringify(jwk), sealPurpose(jwk.kid!)), createdAt: new Date() };
      await this.keys.insertOne(doc);
      created.push(doc);
    }
    const timings = await this.timings();
    return created.map((k) => view(k, timings));
  }

  private async makeActive(kid: string, force: boolean, now: Date): Promise<KeyView[]> {
    const key = await this.find(kid);
    if (key.state !== 'next') throw new KeyRingError(`key ${kid} is ${key.state}; only a next key can be promoted`);
    const promotableAt = after(key.createdAt, (await this.timings()).publishSeconds);
    if (!force && now < promotableAt) {
      throw new KeyRingError(`key ${kid} has not been published long enough for cached key sets to hold it: promote at ${promotableAt.toISOString()} or later (or --force)`);
    }
    await this.keys.updateOne({ _id: kid, state: 'next' }, { $set: { state: 'active', promotedAt: now } });
    await this.keys.updateMany({ alg: key.alg, state: 'active', _id: { $ne: kid } }, { $set: { state: 'retiring', demotedAt: now } });
    const keys = await this.list();
    return [keys.find((k) => k.kid === kid)!, ...keys.filter((k) => k.alg === key.alg && k.state === 'retiring')];
  }

  private async remove(kid: string, force: boolean, now: Date): Promise<KeyView> {
    const key = await this.find(kid);
    const timings = await this.timings();
    if (key.state === 'active') throw new KeyRingError(`key ${kid} is the active ${key.alg} key: promote another one first`);
    if (key.state === 'retired') return view(key, timings);
    const until = retirableAt(key, timings);
    if (!force && until && now < until) {
      throw new KeyRingError(`tokens signed by key ${kid} can still be valid until ${until.toISOString()}: retire it then (or --force)`);
    }
    await this.keys.updateOne({ _id: kid }, { $set: { state: 'retired', retiredAt: now }, $unset: { sealed: '' } });
    // The earlier version's document holds the same private key: it goes with it.
    const legacy = await this.sets.findOne({ _id: 'current' });
    if (legacy?.keys?.some((k) => typeof k === 'object' && k.kid === kid)) await this.sets.deleteOne({ _id: 'current' });
    return view(await this.find(kid), timings);
  }

  /** This process's waits, or the longer ones a serving instance recorded. */
  private async timings(): Promise<KeyTimings> {
    const recorded = await this.timingsDoc.findOne({ _id: 'timings' });
    return {
      publishSeconds: Math.max(this.own.publishSeconds, recorded?.publishSeconds ?? 0),
      signedLifetimeSeconds: Math.max(this.own.signedLifetimeSeconds, recorded?.signedLifetimeSeconds ?? 0),
    };
  }

  private async find(kid: string): Promise<StoredKey> {
    await this.current();
    const key = await this.keys.findOne({ _id: kid });
    if (!key || !key.state) throw new KeyRingError(`no signing key with kid ${kid}`, 404);
    return key;
  }

  /**
   * Inserts one document per key of each set (each once: a unique _id), then marks the set
   * expanded. Safe to repeat after a crash half-way, and by several processes at once.
   */
  private async expand(sets: readonly StoredSet[]): Promise<void> {
    for (const set of sets) {
      for (const entry of set.keys ?? []) {
        const jwk = typeof entry === 'string' ? JSON.parse(this.box.open(entry, SET_PURPOSE)) as JWK : entry;
        await this.insertOnce(storedFrom(jwk, set.createdAt, this.box));
      }
      const marked = { $set: { expandedAt: new Date() } };
      await this.sets.updateOne({ _id: set._id }, set._id === 'initial' ? { ...marked, $unset: { keys: '' } } : marked);
    }
  }

  private async insertOnce(doc: StoredKey): Promise<void> {
    try {
      await this.keys.insertOne(doc);
    } catch (error) {
      if ((error as { code?: unknown }).code !== 11000) throw error;
    }
  }
}

function retirableAt(key: StoredKey, timings: KeyTimings): Date | undefined {
  // A key that never signed can go at once.
  return key.promotedAt ? after(key.demotedAt ?? new Date(), timings.signedLifetimeSeconds) : undefined;
}

function view(key: StoredKey, timings: KeyTimings): KeyView {
  const shown: KeyView = {
    kid: key._id, alg: key.alg, state: key.state, createdAt: key.createdAt.toISOString(),
    promotedAt: iso(key.promotedAt), demotedAt: iso(key.demotedAt), retiredAt: iso(key.retiredAt),
  };
  if (key.state === 'next') shown.promotableAt = after(key.createdAt, timings.publishSeconds).toISOString();
  if (key.state === 'retiring') shown.retirableAt = iso(retirableAt(key, timings));
  return JSON.parse(JSON.stringify(shown)) as KeyView;
}

function storedFrom(jwk: JWK, createdAt: Date, box: SecretBox): StoredKey {
  const alg = (jwk.alg ?? 'ES256') as SigningAlg;
  return {
    _id: jwk.kid!, alg, state: 'active', public: publicJwk(jwk), sealed: box.seal(JSON.stringify(jwk), sealPurpose(jwk.kid!)),
    createdAt, promotedAt: createdAt,
  };
}
