/**
 * `npm run dev`: the provider on embedded defaults at http://localhost:3000, with a local
 * MongoDB-compatible server under ./.data/ when MONGODB_URI is not set.
 */
import { configFromEnvironment, main } from './server.ts';

const config = configFromEnvironment();
if (config.isProduction) {
  process.stderr.write('npm run dev is for development; use npm start in production\n');
  process.exit(1);
}
await main(config);
const discovery = `${config.issuer}/.well-known/openid-configuration`;
process.stdout.write(`
  Identity provider running (development).
  Discovery:     ${discovery}
  Create a user:   npm run -s user -- create --email you@example.com --name You --verified --password-stdin
                   (then type a strong password, e.g. four unrelated words, and press Enter)
  Create a client: npm run -s client -- create --name "My app" --redirect-uri http://localhost:8080/callback
`);
