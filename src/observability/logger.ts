import { pino, type Logger } from 'pino';
import type { LogLevel } from '../config.ts';

export type { Logger };

/**
 * JSON logs on stdout (stderr for CLI scripts, whose stdout is their JSON answer). Redaction is a safety net only: code never passes secrets to the logger,
 * but a stray request object must not leak credentials or cookies either.
 */
export function createLogger(level: LogLevel, fd: 1 | 2 = 1): Logger {
  return pino({
    level,
    base: { service: 'oidc-idp' },
    redact: {
      paths: [
        'password', '*.password', 'client_secret', '*.client_secret',
        'token', '*.token', 'refresh_token', '*.refresh_token', 'authorization', '*.authorization',
        'cookie', '*.cookie', 'headers.authorization', 'headers.cookie',
      ],
      censor: '[redacted]',
    },
  }, pino.destination({ fd, sync: fd === 2 }));
}
