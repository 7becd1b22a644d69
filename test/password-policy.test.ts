/** The self-service password policy (src/security/password-policy.ts). */
import { passwordProblems } from '../src/security/password-policy.ts';

const policy = { minLength: 12 };

test('a long, uncommon password that does not contain the email is accepted', () => {
  expect(passwordProblems('violet staple orbit canyon', 'ada@example.com', policy)).toEqual([]);
});

test.each([
  ['too short', 'short pass', /at least 12/],
  ['too long', 'x'.repeat(129), /at most 128/],
  ['contains the email', 'ada@example.com rocks', /email address/],
  ['contains the local part', 'xx-ADA-lovelace-xx', /email address/],
])('%s is refused', (_name, password, message) => {
  expect(passwordProblems(password, 'ada@example.com', policy).join(' ')).toMatch(message);
});

test('the 10,000 most common passwords are refused, whatever their case', () => {
  const lenient = { minLength: 8 };
  for (const common of ['password', 'Password', 'qwertyuiop', 'iloveyou', 'sunshine', 'football']) {
    expect([common, passwordProblems(common, 'someone@example.com', lenient)]).toEqual([common, [expect.stringMatching(/most common/)]]);
  }
  expect(passwordProblems('correct horse battery', 'someone@example.com', lenient)).toEqual([]);
});
