/** The password policy (src/security/password-policy.ts): length, zxcvbn-ts strength, the owner's email. */
import { passwordHint, passwordProblems } from '../src/security/password-policy.ts';

const policy = { minLength: 12, minScore: 3 };
const owner = { email: 'ada.lovelace@example.com', name: 'Ada Lovelace' };

test('a long passphrase of unrelated words is accepted', () => {
  for (const strong of ['violet staple orbit canyon', 'Tundra-Marble-Quiver-58-Lantern', 'juniper lantern quartz mosaic']) {
    expect([strong, passwordProblems(strong, owner, policy)]).toEqual([strong, []]);
  }
});

test.each([
  ['password1234', /commonly used password/],
  ['aaaaaaaaaaaa', /Repeated characters/],
  ['123456789012', /commonly used password/],
  ['qwertyuiop12', /commonly used password/],
  ['Password1234', /Capitalize more than the first letter/],
])('%s is long enough but refused with the estimator\'s feedback', (weak, feedback) => {
  const problems = passwordProblems(weak, owner, policy);
  expect(problems[0]).toBe('This password is too easy to guess.');
  expect(problems.join(' ')).toMatch(feedback);
  expect(problems.join(' ')).not.toMatch(/at least/);
});

test.each([
  ['too short', 'Vq7#rT', /Use at least 12 characters/],
  ['too long', 'x'.repeat(129), /Use at most 128 characters/],
  ['contains the email', 'ada.lovelace@example.com rocks', /email address/],
  ['contains the local part', 'xx-ADA.LOVELACE-violet-xx', /email address/],
])('%s is refused', (_name, password, message) => {
  expect(passwordProblems(password, owner, policy).join(' ')).toMatch(message);
});

test('the owner\'s name counts as a known word', () => {
  // Strong for a stranger, guessable for someone who knows whose account it is.
  const password = 'zephyrinequillbottom';
  expect(passwordProblems(password, { email: 'someone@example.com' }, policy)).toEqual([]);
  expect(passwordProblems(password, { email: 'zq@example.com', name: 'Zephyrine Quillbottom' }, policy))
    .toEqual(expect.arrayContaining(['This password is too easy to guess.', expect.stringMatching(/personal/)]));
});

test('the minimum score is the policy\'s: 0 accepts anything long enough, 4 asks for more', () => {
  expect(passwordProblems('password1234', owner, { minLength: 12, minScore: 0 })).toEqual([]);
  expect(passwordProblems('adalovelace99!', { email: 'x@example.com' }, { minLength: 12, minScore: 4 })).toContain('This password is too easy to guess.');
});

test('a crafted long password is still estimated quickly', () => {
  const started = performance.now();
  for (const crafted of ['ab1!'.repeat(32), '19801980'.repeat(16), '@4$5!1|0'.repeat(16)]) passwordProblems(crafted, owner, policy);
  expect(performance.now() - started).toBeLessThan(1500);
});

test('the hint states the length and the advice', () => {
  expect(passwordHint(policy)).toMatch(/^At least 12 characters, and hard to guess\./);
});
