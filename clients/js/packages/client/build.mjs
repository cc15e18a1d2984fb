// Builds dist/: index.js (ESM, minified, eventsource-parser bundled in,
// es2020) with its esbuild metafile in meta.json, and the declarations
// (index.d.ts and the modules it refers to) from tsc.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);

const result = await build({
  entryPoints: [join(here, 'src/index.ts')],
  outfile: join(dist, 'index.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2020',
  minify: true,
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
});
writeFileSync(join(dist, 'meta.json'), JSON.stringify(result.metafile));

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', here, '--emitDeclarationOnly'], { stdio: 'inherit' });
