// Unit tests of every package: packages/*/test/**/*.test.ts(x).
// Environment: node by default; the react package's tests run in jsdom (a
// `// @vitest-environment jsdom` docblock works anywhere too).
// `@nginx-sse/client` resolves to its TypeScript source, so the react tests
// need no build of the client.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const clientSource = fileURLToPath(new URL('./packages/client/src/index.ts', import.meta.url));

export default defineConfig({
  resolve: { alias: { '@nginx-sse/client': clientSource } },
  test: {
    projects: [
      {
        extends: true,
        test: {
          name: 'node',
          include: ['packages/*/test/**/*.test.{ts,tsx}'],
          exclude: ['packages/react/**', '**/node_modules/**'],
          environment: 'node',
        },
      },
      {
        extends: true,
        test: {
          name: 'jsdom',
          include: ['packages/react/test/**/*.test.{ts,tsx}'],
          environment: 'jsdom',
        },
      },
    ],
  },
});
