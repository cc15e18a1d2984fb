// Builds @nginx-sse/react:
//   dist/index.js    ESM, minified (esbuild; react and @nginx-sse/client external, automatic JSX runtime)
//   dist/meta.json   esbuild metafile (what is in the bundle)
//   dist/index.d.ts  declarations (TypeScript compiler API; only this package's files are emitted)
// `node build.mjs --no-types` builds the bundle only (the bundle-size test uses it).
import { build } from 'esbuild';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { readFileSync } from 'node:fs';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const entry = join(here, 'src', 'index.tsx');
const withTypes = !process.argv.includes('--no-types');

// --no-types rewrites the bundle only (and leaves any earlier declarations in place).
if (withTypes) rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

const result = await build({
  absWorkingDir: here, // metafile paths relative to the package
  entryPoints: [entry],
  outfile: join(dist, 'index.js'),
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  target: 'es2020',
  minify: true,
  sourcemap: false,
  jsx: 'automatic',
  // A package path also covers its subpaths (react/jsx-runtime).
  external: ['react', '@nginx-sse/client'],
  metafile: true,
  logLevel: 'warning',
});
writeFileSync(join(dist, 'meta.json'), JSON.stringify(result.metafile, null, 2));

const js = readFileSync(join(dist, 'index.js'));
const gz = gzipSync(js).length;
console.log(`@nginx-sse/react: dist/index.js ${js.length} B, ${gz} B min+gzip`);

if (withTypes) await emitDeclarations();

async function emitDeclarations() {
  const ts = (await import('typescript')).default;
  const configPath = join(here, 'tsconfig.json');
  const config = ts.readConfigFile(configPath, ts.sys.readFile);
  if (config.error) fail([config.error]);
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, here);
  const options = {
    ...parsed.options,
    noEmit: false,
    declaration: true,
    emitDeclarationOnly: true,
    outDir: dist,
    rootDir: join(here, 'src'),
  };
  const program = ts.createProgram({ rootNames: [entry], options });
  const own = (f) => f && resolve(f.fileName).startsWith(join(here, 'src'));
  // 6059: "file is not under rootDir" — the core's sources when its dist is not built
  // (tsconfig `paths` falls back to them); they are type-checked, not emitted.
  const errors = ts
    .getPreEmitDiagnostics(program)
    .filter((d) => d.category === ts.DiagnosticCategory.Error && d.code !== 6059 && (!d.file || own(d.file)));
  if (errors.length) fail(errors);
  for (const sf of program.getSourceFiles()) {
    if (!own(sf)) continue;
    const r = program.emit(sf, undefined, undefined, true);
    if (r.emitSkipped) fail(r.diagnostics);
  }
  console.log('@nginx-sse/react: dist/index.d.ts');

  function fail(diagnostics) {
    console.error(
      ts.formatDiagnosticsWithColorAndContext(diagnostics, {
        getCanonicalFileName: (f) => f,
        getCurrentDirectory: () => here,
        getNewLine: () => '\n',
      }),
    );
    process.exit(1);
  }
}

