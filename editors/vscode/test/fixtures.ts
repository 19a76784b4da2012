/**
 * Where the end-to-end tests find the server, Python and the tiny model. Each can be given by
 * environment (CODELLAMA_LSP_SERVER, CODELLAMA_TEST_PYTHON, CODELLAMA_TEST_MODEL); by default
 * they come from the repository's .venv, and the model is written once into out/.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

/** out/test -> editors/vscode -> editors -> repository root. */
export const REPO_ROOT = resolve(__dirname, "..", "..", "..", "..");

function venvBin(name: string): string | undefined {
  const path = join(REPO_ROOT, ".venv", "bin", name);
  return existsSync(path) ? path : undefined;
}

export function serverPath(): string {
  return process.env.CODELLAMA_LSP_SERVER ?? venvBin("codellama-lsp") ?? "codellama-lsp";
}

/** The Python that has the project (and pytest-lsp) installed. */
export function pythonPath(): string {
  return process.env.CODELLAMA_TEST_PYTHON ?? venvBin("python") ?? "python3";
}

export function tinyModel(): string {
  if (process.env.CODELLAMA_TEST_MODEL) return process.env.CODELLAMA_TEST_MODEL;
  const out = join(REPO_ROOT, "editors", "vscode", "out", "test-model");
  execFileSync(pythonPath(), ["-m", "tests.editors.tiny_model", out], { cwd: REPO_ROOT, stdio: "inherit" });
  return out;
}

/** Polls `check` until it returns something other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The document every end-to-end test completes in: the cursor after `return `. */
export const PYTHON_SOURCE = "def add(a, b):\n    return \n";
export const CURSOR = { line: 1, character: "    return ".length };
