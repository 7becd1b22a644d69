/**
 * Loads a code block from README.md as a real ES module, so a test runs the example exactly as a
 * reader would copy it: only the named constants get the test's values, nothing else is touched.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const ROOT = path.resolve(import.meta.dirname, '../..');

/** The fenced block right after `<!-- readme-example: NAME ... -->`; throws when the marker is gone. */
export function readmeExample(name: string): string {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const block = new RegExp(`<!-- readme-example: ${escaped}\\b[^>]*-->\\n\`\`\`(?:js|ts)\\n([\\s\\S]*?)\\n\`\`\`\\n`).exec(readme);
  if (!block) throw new Error(`README.md has no block marked "readme-example: ${name}"`);
  return block[1]!;
}

/** The string value of `const NAME = '...';` in the block, or undefined when it is not declared so. */
export function constantValue(source: string, name: string): string | undefined {
  return new RegExp(`^const ${name} = '([^'\\n]*)';$`, 'm').exec(source)?.[1];
}

/** Replaces the values of `const NAME = '...';` declarations; each one must appear exactly once. */
export function withConstants(source: string, values: Record<string, string>): string {
  let result = source;
  for (const [name, value] of Object.entries(values)) {
    const declaration = new RegExp(`^const ${name} = '[^'\\n]*';$`, 'gm');
    const count = result.match(declaration)?.length ?? 0;
    if (count !== 1) throw new Error(`expected one "const ${name} = '...';" in the example, found ${count}`);
    result = result.replace(declaration, () => `const ${name} = ${JSON.stringify(value)};`);
  }
  return result;
}

/**
 * Imports `source` as an .mjs module written inside the project (so bare imports such as
 * openid-client resolve from its node_modules), and deletes the file again once it is loaded.
 */
export async function importModule<T>(source: string): Promise<T> {
  const dir = fs.mkdtempSync(path.join(ROOT, 'test', '.tmp-readme-'));
  try {
    const file = path.join(dir, 'example.mjs');
    fs.writeFileSync(file, source);
    return await import(pathToFileURL(file).href) as T;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
