import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["out/", "node_modules/", "*.vsix", "e2e/node_modules/", "e2e/out/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  { files: ["**/*.ts"], rules: { eqeqeq: "error" } },
  {
    // The real-VS Code test: node globals, and the page's `document` inside page.evaluate.
    files: ["e2e/**/*.mjs"],
    languageOptions: {
      globals: { process: "readonly", setTimeout: "readonly", fetch: "readonly", document: "readonly" },
    },
    rules: { eqeqeq: "error" },
  },
  {
    // A dropped promise from the language client hides a server error from the user and the log.
    // (Not in test/: node:test's top-level test() calls return promises its runner awaits.)
    files: ["src/**/*.ts"],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: { "@typescript-eslint/no-floating-promises": "error" },
  },
);
