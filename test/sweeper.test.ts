/** The bounded expiry sweeper against the real MongoDB-compatible server (FerretDB unless MONGODB_URI). */
import mongoose, { type Collection } from 'mongoose';
import { ExpirySweeper, LOCK_ID, type SweeperOptions } from '../adapters/sweeper.ts';
import { testMongoUri } from './support/env.ts';
import { startFaultyMongo, type FaultyService } from './support/faults.ts';

const MINUTE = 60_000;
const T0 = Date.UTC(2030, 0, 1);

interface Doc { _id: string; expiresAt?: Date; payload?: unknown }

async function seed(collection: Collection, count: number, expiresAt: (i: number) => Date | undefined, prefix = collection.collectionName) {
  for (let from = 0; from < count; from += 1000) {
    const docs: Doc[] = [];
    for (let i = from; i < Math.min(count, from + 1000); i += 1) {
      const at = expiresAt(i);
      docs.push({ _id: `${prefix}-${i}`, payload: { n: i }, ...(at ? { expiresAt: at } : {}) });
    }
    await (collection as unknown as Collection<Doc>).insertMany(docs, { ordered: false });
  }
}

const expired = (collection: Collection, nowMs: number) => collection.countDocuments({ expiresAt: { $lt: new Date(nowMs) } });

/** A clock the test moves; both sweepers of a test read the same one. */
function clock(start = T0) {
  let at = start;
  return { now: () => at, advance(ms: number) { at += ms; } };
}

/**
 * The collection, with one real write slipped in between the sweeper's find and its delete: the
 * document is saved again with a later expiry, as a session is on its next request.
 */
function resavedBeforeDelete(collection: Collection, id: string): Collection {
  return new Proxy(collection, {
    get(target, property) {
      if (property === 'bulkWrite') {
        return async (...args: Parameters<Collection['bulkWrite']>) => {
          await target.updateOne({ _id: id } as object, { $set: { expiresAt: new Date(T0 + 14 * 24 * 60 * MINUTE) } });
          return target.bulkWrite(...args);
        };
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

async function sweepUntilDone(sweeper: ExpirySweeper, maxTicks: number) {
  const ticks = [];
  for (let i = 0; i < maxTicks; i += 1) {
    const result = await sweeper.tick();
    ticks.push(result);
    if (!result.ranOutOfBudget) break;
  }
  return ticks;
}

describe('ExpirySweeper', () => {
  let conn: mongoose.Connection;
  let locks: Collection;
  beforeAll(async () => {
    conn = await mongoose.createConnection(testMongoUri('sweeper'), { autoIndex: false }).asPromise();
    locks = conn.collection('locks');
  });
  afterEach(async () => {
    await locks.deleteMany({});
  });
  afterAll(async () => {
    await conn.dropDatabase().catch(() => {});
    await conn.close();
  });

  const sweeperFor = (collections: Collection[], options: Partial<SweeperOptions> = {}) =>
    new ExpirySweeper({ collections: () => collections, locks, owner: 'instance-a', graceMs: 0, ...options });

  test('removes expired documents and keeps live ones and those without an expiry', async () => {
    const [tokens, sessions] = [conn.collection('sw_tokens'), conn.collection('sw_sessions')];
    const { now } = clock();
    await seed(tokens, 40, (i) => new Date(T0 + (i % 2 === 0 ? -MINUTE : MINUTE)));
    await seed(sessions, 30, (i) => (i < 10 ? new Date(T0 - 1) : i < 20 ? new Date(T0 + 1) : undefined));

    const result = await sweeperFor([tokens, sessions], { now, budgetMs: 60_000 }).tick();

    expect(result).toMatchObject({ removed: 30, ranOutOfBudget: false, lockHeld: true });
    expect(await tokens.countDocuments()).toBe(20);
    expect(await expired(tokens, T0)).toBe(0);
    expect(await sessions.countDocuments()).toBe(20);
    expect(await sessions.countDocuments({ expiresAt: { $exists: false } })).toBe(10);
  });

  test('a tiny budget over a large collection runs out, and later ticks finish the job', async () => {
    const big = conn.collection('sw_big');
    const { now } = clock();
    await seed(big, 5_200, (i) => new Date(T0 + (i < 5_000 ? -MINUTE : MINUTE)));
    const sweeper = sweeperFor([big], { now, batchSize: 100, budgetMs: 20 });

    const first = await sweeper.tick();
    expect(first.ranOutOfBudget).toBe(true);
    expect(first.removed).toBeGreaterThan(0);
    expect(first.removed).toBeLessThan(5_000);
    expect(first.removed % 100).toBe(0); // whole batches only

    const rest = await sweepUntilDone(sweeper, 200);
    expect(rest.at(-1)!.ranOutOfBudget).toBe(false);
    expect(first.removed + rest.reduce((sum, tick) => sum + tick.removed, 0)).toBe(5_000);
    expect(await big.countDocuments()).toBe(200);
  });

  test('a huge collection does not starve the others: the next tick starts after it', async () => {
    const [huge, small] = [conn.collection('sw_huge'), conn.collection('sw_small')];
    const { now } = clock();
    await seed(huge, 3_000, () => new Date(T0 - MINUTE));
    await seed(small, 5, () => new Date(T0 - MINUTE));
    const sweeper = sweeperFor([huge, small], { now, batchSize: 100, budgetMs: 1 });

    expect(await sweeper.tick()).toMatchObject({ ranOutOfBudget: true, removed: 100 });
    expect(await small.countDocuments()).toBe(5);
    // Its turn comes next, although the huge one is far from done.
    await sweeper.tick();
    expect(await small.countDocuments()).toBe(0);
    expect(await huge.countDocuments()).toBeGreaterThan(2_000);
  });

  test('only documents expired longer ago than the grace period are removed', async () => {
    const sessions = conn.collection('sw_grace');
    const time = clock();
    await seed(sessions, 2, (i) => new Date(T0 - (i === 0 ? 11 * MINUTE : 1_000)));
    const sweeper = sweeperFor([sessions], { now: time.now, graceMs: 10 * MINUTE });

    expect((await sweeper.tick()).removed).toBe(1);
    expect(await sessions.findOne({ _id: 'sw_grace-1' } as object)).not.toBeNull();
    time.advance(10 * MINUTE);
    expect((await sweeper.tick()).removed).toBe(1);
    expect(await sessions.countDocuments()).toBe(0);
  });

  test('with the re-check, a document whose expiry moved into the future after it was found is kept', async () => {
    const sessions = conn.collection('sw_resaved');
    const { now } = clock();
    await seed(sessions, 3, () => new Date(T0 - MINUTE));
    const result = await sweeperFor([resavedBeforeDelete(sessions, 'sw_resaved-1')], { now, recheckExpiry: true }).tick();

    expect(result.removed).toBe(2);
    expect(await sessions.find({}).map((doc) => doc._id).toArray()).toEqual(['sw_resaved-1']);
  });

  test('by default the delete re-checks expiry exactly where that keeps the index: not on FerretDB', async () => {
    const sessions = conn.collection('sw_resaved_default');
    const { now } = clock();
    await seed(sessions, 1, () => new Date(T0 - MINUTE));
    const plan = await sessions.find({}).explain() as { serverInfo?: object };
    const ferretDb = plan.serverInfo !== undefined && 'ferretdbVersion' in plan.serverInfo;
    await sweeperFor([resavedBeforeDelete(sessions, 'sw_resaved_default-0')], { now }).tick();

    // FerretDB deletes by _id alone (a second condition would scan the collection per id): there
    // the grace period, not the filter, keeps such a document (see the test above it).
    expect(await sessions.countDocuments()).toBe(ferretDb ? 0 : 1);
  });

  test('a collection swept to its end is left alone for revisitMs', async () => {
    const codes = conn.collection('sw_revisit');
    const time = clock();
    const sweeper = sweeperFor([codes], { now: time.now, revisitMs: 5 * MINUTE });
    await seed(codes, 3, () => new Date(T0 - 1), 'first');
    expect((await sweeper.tick()).removed).toBe(3);

    await seed(codes, 2, () => new Date(T0 - 1), 'second');
    time.advance(MINUTE);
    expect((await sweeper.tick()).removed).toBe(0);
    time.advance(4 * MINUTE);
    expect((await sweeper.tick()).removed).toBe(2);
  });

  test('one sweeper at a time; another takes over once the holder stops renewing', async () => {
    const grants = conn.collection('sw_locked');
    const time = clock();
    const ttl = 3 * MINUTE;
    const a = sweeperFor([grants], { now: time.now, owner: 'instance-a', lockTtlMs: ttl });
    const b = sweeperFor([grants], { now: time.now, owner: 'instance-b', lockTtlMs: ttl });

    expect((await a.tick()).lockHeld).toBe(true);
    await seed(grants, 4, () => new Date(T0 - 1));
    expect(await b.tick()).toMatchObject({ lockHeld: false, removed: 0 });
    expect(await grants.countDocuments()).toBe(4);

    // The holder renews on each tick, so the lock outlives its first term while it keeps ticking.
    time.advance(ttl - 1_000);
    expect((await a.tick()).lockHeld).toBe(true);
    time.advance(2_000);
    expect((await b.tick()).lockHeld).toBe(false);

    // a stops ticking (paused or gone): once its lock has expired, b takes over and a stands down.
    time.advance(ttl);
    expect(await b.tick()).toMatchObject({ lockHeld: true });
    expect(await locks.findOne({ _id: LOCK_ID } as object)).toMatchObject({ owner: 'instance-b' });
    expect((await a.tick()).lockHeld).toBe(false);
    expect((await b.tick()).lockHeld).toBe(true);
  });

  test('sweepers racing for a free lock: exactly one gets it each round', async () => {
    const accessTokens = conn.collection('sw_race');
    const sweepers = ['a', 'b', 'c'].map((owner) => sweeperFor([accessTokens], { owner }));
    for (let round = 0; round < 5; round += 1) {
      const results = await Promise.all(sweepers.map((sweeper) => sweeper.tick()));
      expect(results.filter((result) => result.lockHeld)).toHaveLength(1);
      await locks.deleteMany({}); // free it again for the next round
    }
  });

  test('stop() releases the lock so another instance can sweep at once', async () => {
    const interactions = conn.collection('sw_release');
    const a = sweeperFor([interactions], { owner: 'instance-a' });
    const b = sweeperFor([interactions], { owner: 'instance-b' });
    const errors: unknown[] = [];
    const stop = a.start(3_600, (error) => errors.push(error));
    expect((await a.tick()).lockHeld).toBe(true);
    expect((await b.tick()).lockHeld).toBe(false);
    await stop();
    expect(await locks.findOne({ _id: LOCK_ID } as object)).toBeNull();
    expect((await b.tick()).lockHeld).toBe(true);
    expect(errors).toEqual([]);
  });
});

describe('ExpirySweeper on a failing database', () => {
  let faulty: FaultyService;
  let conn: mongoose.Connection;
  beforeAll(async () => {
    faulty = await startFaultyMongo();
    conn = await mongoose.createConnection(`${faulty.uri}/sweeper_faults`, {
      autoIndex: false, serverSelectionTimeoutMS: 500,
    }).asPromise();
  });
  afterAll(async () => {
    await conn.close(true).catch(() => {});
    await faulty.stop();
  });

  const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  test('a hung tick is never overlapped, stop() waits for it, and errors reach onError', async () => {
    const tokens = conn.collection('sw_faulty');
    await seed(tokens, 10, () => new Date(Date.now() - MINUTE));
    let ticksStarted = 0; // each tick reads the clock once, when it starts
    const now = () => { ticksStarted += 1; return Date.now(); };
    const sweeper = new ExpirySweeper({ collections: () => [tokens], locks: conn.collection('locks'), owner: 'a', graceMs: 0, now });
    const errors: unknown[] = [];
    let stop = sweeper.start(0.1, (error) => errors.push(error));
    for (let i = 0; i < 50 && (await tokens.countDocuments()) > 0; i += 1) await wait(100);
    expect(await tokens.countDocuments()).toBe(0);

    // Hung server: the tick in flight waits, and the ten that fall due meanwhile are skipped.
    faulty.pause();
    const before = ticksStarted;
    await wait(1_000);
    expect(ticksStarted - before).toBeLessThanOrEqual(1);

    let stopped = false;
    const stopping = stop().then(() => { stopped = true; });
    await wait(300);
    expect(stopped).toBe(false);
    faulty.resume();
    await stopping;
    expect(await conn.collection('locks').findOne({ _id: LOCK_ID } as object)).toBeNull();
    expect(errors).toEqual([]);

    // Server gone: every tick fails into onError, nothing escapes the timer, stop() still ends.
    stop = sweeper.start(0.1, (error) => errors.push(error));
    await faulty.kill();
    for (let i = 0; i < 50 && errors.length < 2; i += 1) await wait(100);
    await stop();
    expect(errors.length).toBeGreaterThanOrEqual(2);
  });
});
