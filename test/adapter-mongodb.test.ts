/** Runs the adapter contract against the MongoDB-compatible server started for the test run. */
import mongoose from 'mongoose';
import { ArtifactStore } from '../adapters/mongodb.ts';
import { describeAdapterContract } from './adapter/contract.ts';
import { testMongoUri } from './support/env.ts';

describeAdapterContract('MongoDB (mongoose connection)', async () => {
  const conn = await mongoose.createConnection(testMongoUri('adapter'), { autoIndex: false }).asPromise();
  const store = new ArtifactStore(conn);
  await store.ensureIndexes();
  return {
    store,
    async close() {
      await conn.dropDatabase().catch(() => {});
      await conn.close();
    },
  };
});
