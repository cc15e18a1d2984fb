// @vitest-environment node
// dist/index.js must stay within 2 KB minified + gzipped.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bundle = join(root, 'dist', 'index.js');

it('dist/index.js is at most 2 KB min+gzip', () => {
  // Built here when missing or older than the source.
  const stale = !existsSync(bundle) || statSync(bundle).mtimeMs < statSync(join(root, 'src', 'index.tsx')).mtimeMs;
  if (stale) execFileSync(process.execPath, [join(root, 'build.mjs'), '--no-types'], { stdio: 'pipe' });
  const js = readFileSync(bundle);
  const gzip = gzipSync(js).length;
  console.log(`@nginx-sse/react dist/index.js: ${js.length} B minified, ${gzip} B min+gzip (limit 2048 B)`);
  expect(gzip).toBeLessThanOrEqual(2048);
  // Only react (+ its automatic JSX runtime) and the core are imported; nothing of them is bundled.
  const meta = JSON.parse(readFileSync(join(root, 'dist', 'meta.json'), 'utf8'));
  const out = meta.outputs['dist/index.js'];
  expect(Object.keys(out.inputs)).toEqual(['src/index.tsx']);
  expect(out.imports.map((i: { path: string; external: boolean }) => `${i.path}:${i.external}`).sort()).toEqual([
    '@nginx-sse/client:true',
    'react/jsx-runtime:true',
    'react:true',
  ]);
});
