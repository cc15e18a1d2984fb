// Builds dist/: index.js (ESM for Node >= 20; `redis` stays an import) with
// the text of redis/sse.lua embedded (esbuild `define`), sse.lua itself (a
// copy, for `redis-cli -x FUNCTION LOAD REPLACE < dist/sse.lua`), and the
// declarations from tsc. redis/sse.lua is the one copy in git;
// test/packaging.test.ts fails when the built copies differ from it.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const lua = join(here, '../../../../redis/sse.lua');
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);

copyFileSync(lua, join(dist, 'sse.lua'));
await build({
  entryPoints: [join(here, 'src/index.ts')],
  outfile: join(dist, 'index.js'),
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['redis'],
  define: { __SSE_LUA__: JSON.stringify(readFileSync(lua, 'utf8')) },
  minifySyntax: true, // folds the sources-only branch of sseLua() away
  legalComments: 'none',
  logLevel: 'warning',
});

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', here, '--emitDeclarationOnly'], { stdio: 'inherit' });
