/**
 * TOTP MFA against the real database (FerretDB in development and tests, where only an insert on a
 * unique `_id` is atomic). Codes are computed here with otplib; the service runs on a clock the
 * tests move, so "current", "previous" and "two steps old" are exact instead of racing real time.
 */
import { generate } from 'otplib';
import { loadConfig } from '../src/config.ts';
import { MfaError, MfaService, type MfaErrorCode } from '../src/accounts/mfa.ts';
import { accountModel } from '../src/accounts/model.ts';
import { createLogger } from '../src/observability/logger.ts';
import { openServices, type Services } from '../src/services.ts';
import { testMongoUri } from './support/env.ts';

const STEP_MS = 30_000;
const PASSWORD = 'correct horse battery staple';
const RECOVERY_FORMAT = /^[a-z2-7]{5}-[a-z2-7]{5}$/;

let services: Services;
let mfa: MfaService;
/** The service's clock: 10 s into a time step, so a step is ±30 s away from any value it takes. */
let clock = Math.floor(Date.now() / STEP_MS) * STEP_MS + 10_000;
let accountCount = 0;

beforeAll(async () => {
  services = await openServices(
    loadConfig({ NODE_ENV: 'test', MONGODB_URI: testMongoUri('mfa'), LOG_LEVEL: 'silent', COOKIE_KEYS: 'x'.repeat(32) }),
    createLogger('silent'),
  );
  mfa = new MfaService(services.connection, services.accounts, { issuer: 'id.example.com', now: () => clock });
});

afterAll(async () => {
  await services?.connection.dropDatabase();
  await services?.close();
});

function advance(steps: number): void {
  clock += steps * STEP_MS;
}

/** The code of the step `stepsAgo` steps before the service's current one. */
function codeFor(secret: string, stepsAgo = 0): Promise<string> {
  return generate({ secret, epoch: clock / 1000 - stepsAgo * 30 });
}

async function rejects(promise: Promise<unknown>, code: MfaErrorCode): Promise<void> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(MfaError);
  expect((error as MfaError).code).toBe(code);
}

async function newAccount(): Promise<{ id: string; email: string }> {
  const account = await services.accounts.create({ email: `user${++accountCount}@example.com`, password: PASSWORD });
  return { id: account.id, email: account.email };
}

/** An account with MFA on; the clock is then moved past the confirming step. */
async function enrolled(): Promise<{ id: string; secret: string; recoveryCodes: string[] }> {
  const { id, email } = await newAccount();
  const { secret } = await mfa.beginEnrolment(id, email);
  const recoveryCodes = await mfa.confirmEnrolment(id, await codeFor(secret));
  advance(2);
  return { id, secret, recoveryCodes };
}

test('openServices exposes the service, labelled with the issuer host', async () => {
  const { id, email } = await newAccount();
  expect(await services.mfa.status(id)).toEqual({ enabled: false, recoveryCodesLeft: 0 });
  const { otpauthUri } = await services.mfa.beginEnrolment(id, email);
  expect(otpauthUri).toMatch(/^otpauth:\/\/totp\/localhost:user\d+%40example\.com\?.*issuer=localhost/);
});

test('enrolment: a QR code for a pending secret, a wrong code refused, the right one turns MFA on', async () => {
  const { id, email } = await newAccount();
  const enrolment = await mfa.beginEnrolment(id, email);
  expect(enrolment.secret).toMatch(/^[A-Z2-7]{32}$/);
  expect(enrolment.otpauthUri).toBe(`otpauth://totp/id.example.com:${encodeURIComponent(email)}?secret=${enrolment.secret}&issuer=id.example.com`);
  expect(enrolment.expiresAt).toEqual(new Date(clock + 15 * 60_000));
  const png = Buffer.from(enrolment.qrCodeDataUrl.replace(/^data:image\/png;base64,/, ''), 'base64');
  expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));

  // Pending is not active: its codes do not pass a sign-in.
  expect(await mfa.verifySignIn(id, await codeFor(enrolment.secret))).toBeUndefined();
  expect(await mfa.status(id)).toEqual({ enabled: false, recoveryCodesLeft: 0 });

  const right = await codeFor(enrolment.secret);
  const wrong = String((Number(right) + 1) % 1_000_000).padStart(6, '0');
  await rejects(mfa.confirmEnrolment(id, wrong), 'mfa_invalid_code');
  expect(await mfa.status(id)).toEqual({ enabled: false, recoveryCodesLeft: 0 });

  const codes = await mfa.confirmEnrolment(id, right);
  expect(codes).toHaveLength(10);
  for (const code of codes) expect(code).toMatch(RECOVERY_FORMAT);
  expect(new Set(codes).size).toBe(10);
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 10 });

  const stored = await accountModel(services.connection).findById(id).lean();
  expect(stored?.mfaPending).toBeUndefined();
  expect(stored?.mfa?.secret).toBe(enrolment.secret);
  expect(stored?.mfa?.recoveryCodeHashes).toHaveLength(10);
  for (const hash of stored?.mfa?.recoveryCodeHashes ?? []) expect(hash).toMatch(/^[0-9a-f]{64}$/);
  const raw = JSON.stringify(stored);
  for (const code of codes) {
    expect(raw).not.toContain(code);
    expect(raw).not.toContain(code.replace('-', ''));
  }

  // The confirming code's step is used: it cannot be replayed at sign-in.
  expect(await mfa.verifySignIn(id, right)).toBeUndefined();
  await rejects(mfa.beginEnrolment(id, email), 'mfa_already_enabled');
  await rejects(mfa.confirmEnrolment(id, await codeFor(enrolment.secret)), 'mfa_already_enabled');
});

test('sign-in: current step once, previous step once, nothing older or from the future', async () => {
  const { id, secret } = await enrolled();
  advance(1);
  // Three steps after the confirming one: the step two back has never been used.
  expect(await mfa.verifySignIn(id, await codeFor(secret, 2))).toBeUndefined();
  expect(await mfa.verifySignIn(id, await codeFor(secret, -1))).toBeUndefined();
  expect(await mfa.verifySignIn(id, 'not a code')).toBeUndefined();

  const current = await codeFor(secret);
  expect(await mfa.verifySignIn(id, current)).toBe('otp');
  expect(await mfa.verifySignIn(id, current)).toBeUndefined();

  const previous = await codeFor(secret, 1);
  expect(await mfa.verifySignIn(id, `${previous.slice(0, 3)} ${previous.slice(3)}`)).toBe('otp');
  expect(await mfa.verifySignIn(id, previous)).toBeUndefined();

  // The current step's code is still refused once it has become the previous step.
  advance(1);
  expect(await mfa.verifySignIn(id, current)).toBeUndefined();
});

test('20 concurrent verifications of one fresh code: exactly one succeeds', async () => {
  const { id, secret } = await enrolled();
  const code = await codeFor(secret);
  const results = await Promise.all(Array.from({ length: 20 }, () => mfa.verifySignIn(id, code)));
  expect(results.filter((r) => r === 'otp')).toHaveLength(1);
  expect(results.filter((r) => r === undefined)).toHaveLength(19);
});

test('recovery codes work once, in any case and with or without the dash', async () => {
  const { id, secret, recoveryCodes } = await enrolled();
  const [first, second, third] = recoveryCodes as [string, string, string];

  expect(await mfa.verifySignIn(id, first)).toBe('recovery');
  expect(await mfa.verifySignIn(id, first)).toBeUndefined();
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 9 });

  const retyped = ` ${second.replace('-', '').slice(0, 3).toUpperCase()} ${second.replace('-', '').slice(3).toUpperCase()} `;
  expect(await mfa.verifySignIn(id, retyped)).toBe('recovery');
  expect(await mfa.verifySignIn(id, second)).toBeUndefined();
  expect(await mfa.verifySignIn(id, 'aaaaa-aaaaa')).toBeUndefined();

  const concurrent = await Promise.all(Array.from({ length: 20 }, () => mfa.verifySignIn(id, third)));
  expect(concurrent.filter((r) => r === 'recovery')).toHaveLength(1);
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 7 });

  // The periodic sweep clears expired TOTP markers and keeps the used recovery codes used.
  advance(20);
  expect(await mfa.verifySignIn(id, await codeFor(secret))).toBe('otp');
  await mfa.sweep();
  const totpMarkers = await services.connection.collection('mfa_used').countDocuments({ accountId: id, kind: 'totp' });
  expect(totpMarkers).toBe(1);
  expect(await mfa.verifySignIn(id, first)).toBeUndefined();
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 7 });
});

test('regenerating recovery codes invalidates the old ones', async () => {
  const { id, recoveryCodes } = await enrolled();
  expect(await mfa.verifySignIn(id, recoveryCodes[0]!)).toBe('recovery');

  const fresh = await mfa.regenerateRecoveryCodes(id);
  expect(fresh).toHaveLength(10);
  for (const code of fresh) expect(code).toMatch(RECOVERY_FORMAT);
  expect(fresh.filter((code) => recoveryCodes.includes(code))).toEqual([]);
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 10 });

  expect(await mfa.verifySignIn(id, recoveryCodes[1]!)).toBeUndefined();
  expect(await mfa.verifySignIn(id, fresh[0]!)).toBe('recovery');
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 9 });

  const { id: without } = await newAccount();
  await rejects(mfa.regenerateRecoveryCodes(without), 'mfa_not_enabled');
});

test('disable needs the password and a TOTP code; afterwards no code passes', async () => {
  const { id, secret, recoveryCodes } = await enrolled();
  const code = await codeFor(secret);

  await rejects(mfa.disable(id, 'not the password', code), 'mfa_invalid_password');
  const wrong = String((Number(code) + 1) % 1_000_000).padStart(6, '0');
  await rejects(mfa.disable(id, PASSWORD, wrong), 'mfa_invalid_code');
  await rejects(mfa.disable(id, PASSWORD, recoveryCodes[0]!), 'mfa_invalid_code');
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 10 });

  // The code refused with the wrong password was not used up.
  await mfa.disable(id, PASSWORD, code);
  expect(await mfa.status(id)).toEqual({ enabled: false, recoveryCodesLeft: 0 });
  const stored = await accountModel(services.connection).findById(id).lean();
  expect(stored?.mfa).toBeUndefined();

  advance(1);
  expect(await mfa.verifySignIn(id, await codeFor(secret))).toBeUndefined();
  expect(await mfa.verifySignIn(id, recoveryCodes[1]!)).toBeUndefined();
  await rejects(mfa.disable(id, PASSWORD, await codeFor(secret)), 'mfa_not_enabled');
});

test('an unconfirmed secret expires after 15 minutes', async () => {
  const { id, email } = await newAccount();
  await rejects(mfa.confirmEnrolment(id, '123456'), 'mfa_enrolment_expired');

  const late = await mfa.beginEnrolment(id, email);
  advance(30); // 15 minutes
  await rejects(mfa.confirmEnrolment(id, await codeFor(late.secret)), 'mfa_enrolment_expired');
  expect(await mfa.status(id)).toEqual({ enabled: false, recoveryCodesLeft: 0 });

  // Half a minute earlier it would have worked.
  const inTime = await mfa.beginEnrolment(id, email);
  advance(29);
  expect(await mfa.confirmEnrolment(id, await codeFor(inTime.secret))).toHaveLength(10);
  expect(await mfa.status(id)).toEqual({ enabled: true, recoveryCodesLeft: 10 });
});

test('unknown accounts: typed errors, and no MFA at sign-in', async () => {
  await rejects(mfa.beginEnrolment('no-such-account', 'x@example.com'), 'account_not_found');
  await rejects(mfa.confirmEnrolment('no-such-account', '123456'), 'account_not_found');
  await rejects(mfa.disable('no-such-account', PASSWORD, '123456'), 'account_not_found');
  expect(await mfa.verifySignIn('no-such-account', '123456')).toBeUndefined();
  expect(await mfa.status('no-such-account')).toEqual({ enabled: false, recoveryCodesLeft: 0 });
});
