/**
 * One error type for everything we raise on purpose. `expose` says whether `message` may be shown
 * to the user; anything else is answered with a generic text and logged in full.
 */
export class AppError extends Error {
  readonly code: string;
  readonly status: number;
  readonly expose: boolean;

  constructor(code: string, message: string, status = 400, expose = true) {
    super(message);
    this.name = 'AppError';
    this.code = code;
    this.status = status;
    this.expose = expose;
  }
}

export const isAppError = (error: unknown): error is AppError => error instanceof AppError;
