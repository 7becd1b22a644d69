/** `npm run local:stop`: stops the development MongoDB-compatible server started under ./.data/. */
import { loadConfig } from '../src/config.ts';
import { stopDevMongo } from '../src/local/services.ts';

const config = loadConfig(process.env);
process.stdout.write(stopDevMongo(config.dataDir) ? 'Stopped the local database server.\n' : 'No local database server was running.\n');
