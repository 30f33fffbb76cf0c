// Lint: ESLint's recommended rules everywhere, typescript-eslint's strict type-checked ones on
// the TypeScript sources.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'test-output/'] },
  js.configs.recommended,
  {
    files: ['**/*.ts'],
    extends: [...tseslint.configs.strictTypeChecked, ...tseslint.configs.stylisticTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { varsIgnorePattern: '^_', ignoreRestSiblings: true }],
      // Numbers in messages are fine.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      // `void promise` marks the fire-and-forget calls on purpose.
      '@typescript-eslint/no-confusing-void-expression': 'off',
    },
  },
  {
    // Checked in a program with the ws package's and the DOM's types (test/tsconfig.env.json).
    files: ['test/types-env.ts', 'test/types-dom.ts'],
    languageOptions: {
      parserOptions: { projectService: false, project: ['./test/tsconfig.env.json'], tsconfigRootDir: import.meta.dirname },
    },
  },
  {
    files: ['**/*.mjs', '**/*.js'],
    languageOptions: { globals: { ...globals.node } },
    rules: {
      'no-unused-vars': ['error', { varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
);
