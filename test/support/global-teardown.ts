import fs from 'node:fs';

export default async function globalTeardown(): Promise<void> {
  const state = globalThis.__testServices;
  if (!state) return;
  await Promise.allSettled(state.started.map((service) => service.stop()));
  fs.rmSync(state.dir, { recursive: true, force: true });
}
