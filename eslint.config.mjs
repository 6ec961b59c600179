// ESLint flat config: `npm run lint` (enforced by .ci/run) and `npm run format`.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import prettier from 'eslint-config-prettier';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default defineConfig(
  {
    ignores: ['dist/', 'build/', 'bench/build/', 'bench/results/', 'node_modules/'],
  },
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },

  // TypeScript: src/, test/ and vitest.config.ts, with type information from tsconfig.json.
  // typescript-eslint's strict and stylistic type-checked sets, less the three settings below.
  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, tseslint.configs.strictTypeChecked, tseslint.configs.stylisticTypeChecked],
    languageOptions: {
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // Numbers in messages (`${bytes} bytes`, `port ${port}`) are all over the code and read
      // as intended; everything else (null, undefined, objects) still has to be made a string.
      // (The other allow* are strict's: options given here replace the preset's, not merge.)
      '@typescript-eslint/restrict-template-expressions': [
        'error',
        {
          allowAny: false,
          allowBoolean: false,
          allowNever: false,
          allowNullish: false,
          allowNumber: true,
          allowRegExp: false,
        },
      ],
      // `() => socket.destroy()` and `expect(() => f()).toThrow()` are the idiom here; a void
      // call in any other expression is still reported.
      '@typescript-eslint/no-confusing-void-expression': ['error', { ignoreArrowShorthand: true }],
      // It asks for `x!` where the code writes `x as T`, and strict's no-non-null-assertion
      // forbids `x!`: the two cannot both be satisfied.
      '@typescript-eslint/non-nullable-type-assertion-style': 'off',
    },
  },

  // Plain JavaScript: bench/*.js and test/fixtures/*.js (CommonJS, run by node as they are)
  // and this file (an ES module). No type information: tsconfig.json does not take JS.
  {
    files: ['**/*.js'],
    extends: [js.configs.recommended],
    languageOptions: { sourceType: 'commonjs', globals: { ...globals.node } },
  },
  {
    files: ['**/*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { sourceType: 'module', globals: { ...globals.node } },
  },

  // Last: turns off every rule that prettier's formatting decides.
  prettier,
);
