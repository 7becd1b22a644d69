/** Small database helpers shared by migrations (behaviour they may rely on staying the same). */
import type { Connection } from 'mongoose';

const NAMESPACE_NOT_FOUND = 26;

/** FerretDB answers buildInfo with its own version; MongoDB does not. */
export async function isFerretDb(connection: Connection): Promise<boolean> {
  return 'ferretdbVersion' in (await connection.db!.admin().command({ buildInfo: 1 }));
}

/** Drops a collection; false when there was none (running again finds it gone). */
export async function dropIfPresent(connection: Connection, name: string): Promise<boolean> {
  try {
    return await connection.db!.collection(name).drop();
  } catch (error) {
    if ((error as { code?: unknown }).code === NAMESPACE_NOT_FOUND) return false;
    throw error;
  }
}
