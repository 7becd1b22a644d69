/**
 * Which failures answer 503 (a dependency is not answering) rather than 500: the resilience suites
 * meet these through real outages; this pins the forms they have been seen to take.
 */
import mongoose from 'mongoose';
import { isUnavailable, ServiceUnavailableError } from '../src/http/unavailable.ts';

test('outages answer 503; mistakes stay 500', () => {
  const { mongo } = mongoose;
  const unavailable: unknown[] = [
    new ServiceUnavailableError('deadline'),
    new mongo.MongoNetworkError('connection reset'),
    Object.assign(new Error('pool'), { name: 'MongoWaitQueueTimeoutError' }),
    // A socket's own error reaching a handler unwrapped, as seen when a database is killed under load.
    { code: 'EPIPE' },
    Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }),
    { status: 503 },
  ];
  for (const error of unavailable) expect([error, isUnavailable(error)]).toEqual([error, true]);
  const mistakes: unknown[] = [new Error('bug'), new TypeError('x is undefined'), { code: 'ENOENT' }, { code: 11000 }, undefined, null];
  for (const error of mistakes) expect([error, isUnavailable(error)]).toEqual([error, false]);
});
