/**
 * Local, Docker-free provisioning of the services the provider needs, for `npm run dev`, the CLI
 * and the tests. Production never uses this: there MONGODB_URI and REDIS_URL are required.
 *
 * MongoDB: a `mongod` on PATH when there is one, otherwise FerretDB v1.24.2 (MongoDB wire protocol)
 * on SQLite, built once from scripts/ferretdb with the Go toolchain and cached per user.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const FERRETDB_VERSION = 'v1.24.2';

export interface LocalService {
  readonly uri: string;
  /** The server's process id (tests pause and kill it to inject faults). */
  readonly pid: number;
  stop(): Promise<void>;
}

type Say = (message: string) => void;

export function projectRoot(): string {
  let dir = import.meta.dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('cannot find the project root (package.json)');
    dir = parent;
  }
  return dir;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

async function waitForPort(port: number, child: ChildProcess | undefined, name: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${name} exited with code ${child.exitCode} before listening`);
    if (await canConnect(port)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} did not listen on 127.0.0.1:${port} within ${timeoutMs / 1000}s`);
}

function onPath(command: string): boolean {
  return spawnSync(command, ['--version'], { stdio: 'ignore' }).status === 0;
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => { clearTimeout(killer); resolve(); });
    child.kill('SIGTERM');
  });
}

/**
 * FerretDB v1.24.2's SQLite backend indexes `_id` as `_ferretdb_sjson->"_id"` but queries it as
 * `_ferretdb_sjson->'$._id'`. SQLite only uses an expression index for the same expression, so
 * every find, update and delete by `_id` scans the whole table (parsing each row's JSON). The two
 * expressions mean the same thing; building with the query side rewritten to `->'_id'` lets SQLite
 * use the index. The build uses a patched copy of the module (3.4 MB) through a `replace`
 * directive in a copy of the wrapper; the repository and the module cache are left alone.
 */
const ID_COLUMN_PATCH = {
  file: 'internal/backends/sqlite/metadata/metadata.go',
  from: `IDColumn = DefaultColumn + "->'$._id'"`,
  to: `IDColumn = DefaultColumn + "->'_id'"`,
};

/** Prepares workDir/wrapper: the wrapper building against workDir/ferretdb, the patched module. */
function preparePatchedBuild(source: string, workDir: string): string {
  const download = spawnSync('go', ['mod', 'download', '-json', 'github.com/FerretDB/FerretDB'], { cwd: source, encoding: 'utf8' });
  if (download.status !== 0) throw new Error(`downloading FerretDB failed: ${download.stderr}`);
  const moduleDir = (JSON.parse(download.stdout) as { Dir: string }).Dir;
  fs.rmSync(workDir, { recursive: true, force: true });
  const patchedModule = path.join(workDir, 'ferretdb');
  fs.cpSync(moduleDir, patchedModule, { recursive: true });
  const file = path.join(patchedModule, ID_COLUMN_PATCH.file);
  const text = fs.readFileSync(file, 'utf8');
  if (!text.includes(ID_COLUMN_PATCH.from)) throw new Error(`FerretDB patch does not apply: ${ID_COLUMN_PATCH.file} has changed`);
  fs.chmodSync(file, 0o644); // the module cache is read-only, and so is the copy
  fs.writeFileSync(file, text.replace(ID_COLUMN_PATCH.from, ID_COLUMN_PATCH.to));
  const wrapper = path.join(workDir, 'wrapper');
  fs.cpSync(source, wrapper, { recursive: true });
  const edit = spawnSync('go', ['mod', 'edit', `-replace=github.com/FerretDB/FerretDB=${patchedModule}`], { cwd: wrapper, encoding: 'utf8' });
  if (edit.status !== 0) throw new Error(`preparing the FerretDB build failed: ${edit.stderr}`);
  return wrapper;
}

/** Builds (once) and returns the path of the FerretDB wrapper binary. */
export function ensureFerretDbBinary(say: Say): string {
  const source = path.join(projectRoot(), 'scripts', 'ferretdb');
  // Keyed by the wrapper's source and the patch too, so a change to either is rebuilt rather
  // than served stale.
  const digest = createHash('sha256').update(JSON.stringify(ID_COLUMN_PATCH));
  for (const file of ['main.go', 'go.mod', 'go.sum']) digest.update(fs.readFileSync(path.join(source, file)));
  const cacheDir = path.join(os.homedir(), '.cache', 'oidc-idp');
  const binary = path.join(cacheDir, `ferretdb-${FERRETDB_VERSION}-${digest.digest('hex').slice(0, 12)}`);
  if (fs.existsSync(binary)) return binary;
  if (spawnSync('go', ['version'], { stdio: 'ignore' }).status !== 0) {
    throw new Error('No MongoDB server: install mongod, set MONGODB_URI, or install Go to build FerretDB');
  }
  say(`Building FerretDB ${FERRETDB_VERSION} with the Go toolchain (first use only, can take a few minutes)...`);
  fs.mkdirSync(cacheDir, { recursive: true });
  const workDir = `${binary}.build`;
  const result = spawnSync('go', ['build', '-o', `${binary}.tmp`, '.'], {
    cwd: preparePatchedBuild(source, workDir),
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  fs.rmSync(workDir, { recursive: true, force: true });
  if (result.status !== 0) throw new Error(`building FerretDB failed (go build exited ${result.status})`);
  fs.renameSync(`${binary}.tmp`, binary);
  say(`FerretDB built: ${binary}`);
  return binary;
}

interface MongoCommand { command: string; args: string[]; kind: 'mongod' | 'ferretdb' }

function mongoCommand(dataDir: string, port: number, say: Say): MongoCommand {
  if (onPath('mongod')) {
    const dbPath = path.join(dataDir, 'mongod');
    fs.mkdirSync(dbPath, { recursive: true });
    return { kind: 'mongod', command: 'mongod', args: ['--dbpath', dbPath, '--port', String(port), '--bind_ip', '127.0.0.1', '--quiet'] };
  }
  const dbPath = path.join(dataDir, 'ferretdb');
  fs.mkdirSync(dbPath, { recursive: true });
  return {
    kind: 'ferretdb',
    command: ensureFerretDbBinary(say),
    // WAL with synchronous=NORMAL: commits survive a crash of the process but not of the machine,
    // the usual trade for a local development/test database (no fsync per write).
    args: ['-listen-addr', `127.0.0.1:${port}`, '-handler', 'sqlite', '-sqlite-url', `file:${dbPath}/?_pragma=synchronous(normal)`, '-log-level', 'error'],
  };
}

/**
 * A throwaway server owned by the caller (tests): stopped with stop(). Given the port (and data
 * directory) of one that was stopped, it starts the same server again.
 */
export async function startEphemeralMongo(dataDir: string, say: Say, port?: number): Promise<LocalService & { kind: string }> {
  port ??= await freePort();
  const { command, args, kind } = mongoCommand(dataDir, port, say);
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port, child, kind).catch(async (error: unknown) => {
    await stopChild(child);
    throw error;
  });
  return { kind, uri: `mongodb://127.0.0.1:${port}`, pid: child.pid!, stop: () => stopChild(child) };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The long-lived development server under dataDir, shared by `npm run dev` and the CLI scripts.
 * Started detached when not running, so it outlives the command that started it
 * (`npm run local:stop` ends it).
 */
export async function ensureDevMongo(dataDir: string, say: Say): Promise<string> {
  const stateFile = path.join(dataDir, 'mongo-server.json');
  if (fs.existsSync(stateFile)) {
    const state = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { pid: number; port: number };
    if (isAlive(state.pid) && (await canConnect(state.port))) return `mongodb://127.0.0.1:${state.port}/oidc`;
  }
  const port = await freePort();
  const { command, args, kind } = mongoCommand(dataDir, port, say);
  fs.mkdirSync(dataDir, { recursive: true });
  const log = fs.openSync(path.join(dataDir, 'mongo-server.log'), 'a');
  const child = spawn(command, args, { stdio: ['ignore', log, log], detached: true });
  child.unref();
  fs.closeSync(log);
  await waitForPort(port, child, kind).catch((error: unknown) => {
    child.kill('SIGTERM');
    throw error;
  });
  fs.writeFileSync(stateFile, JSON.stringify({ pid: child.pid, port, kind }));
  say(`Started local ${kind} on 127.0.0.1:${port} (data in ${dataDir}; stop it with npm run local:stop)`);
  return `mongodb://127.0.0.1:${port}/oidc`;
}

export function stopDevMongo(dataDir: string): boolean {
  const stateFile = path.join(dataDir, 'mongo-server.json');
  if (!fs.existsSync(stateFile)) return false;
  const { pid } = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { pid: number };
  fs.rmSync(stateFile);
  // The pid may have been reused since: only stop it if it is still our database server.
  const commandLine = fs.existsSync(`/proc/${pid}/cmdline`) ? fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8') : '';
  if (!isAlive(pid) || !/ferretdb|mongod/.test(commandLine)) return false;
  process.kill(pid, 'SIGTERM');
  return true;
}

/** Installs a Debian package for `command` when it is missing and we are root; false when impossible. */
function ensureDebianPackage(command: string, pkg: string, say: Say): boolean {
  if (onPath(command)) return true;
  if (process.getuid?.() !== 0 || !onPath('apt-get')) return false;
  say(`Installing ${pkg} from Debian packages...`);
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit' });
  spawnSync('apt-get', ['install', '-y', '-qq', pkg], { stdio: 'inherit' });
  return onPath(command);
}

const ensureRedisServer = (say: Say) => ensureDebianPackage('redis-server', 'redis-server', say);

/** Headless Chromium for the browser suites (Debian's package); its path, or undefined when impossible. */
export function ensureChromium(say: Say): string | undefined {
  return ensureDebianPackage('chromium', 'chromium', say) ? spawnSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).stdout.trim() : undefined;
}

export async function startEphemeralRedis(dataDir: string, say: Say, port?: number): Promise<LocalService> {
  if (!ensureRedisServer(say)) throw new Error('redis-server is not installed and cannot be installed here; set REDIS_URL');
  port ??= await freePort();
  fs.mkdirSync(dataDir, { recursive: true });
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dataDir,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port, child, 'redis-server').catch(async (error: unknown) => {
    await stopChild(child);
    throw error;
  });
  return { uri: `redis://127.0.0.1:${port}`, pid: child.pid!, stop: () => stopChild(child) };
}
