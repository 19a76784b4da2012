import * as vscode from "vscode";
import {
  ClientCapabilities,
  DidChangeConfigurationNotification,
  LanguageClient,
  State,
  StaticFeature,
} from "vscode-languageclient/node";
import { DOCUMENT_SELECTOR } from "./languages";
import { plainSection, RESTART_KEYS, serverArgs, serverCommand, serverSettings } from "./settings";
import { failedView, ServerStatus, startingView, statusView, StatusView } from "./status";

let client: LanguageClient | undefined;

/**
 * Declines work-done progress: the server would show its model load as a second status-bar
 * item beside this extension's own, which already says "loading".
 */
const noProgressBar: StaticFeature = {
  fillClientCapabilities(capabilities: ClientCapabilities) {
    if (capabilities.window) capabilities.window.workDoneProgress = false;
  },
  initialize() {},
  getState: () => ({ kind: "static" }),
  clear() {},
};

/** Where the toggle writes: the workspace's settings when a folder is open, else the user's. */
function toggleTarget(): vscode.ConfigurationTarget {
  return vscode.workspace.workspaceFolders?.length ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const log = vscode.window.createOutputChannel("Code Llama", { log: true });
  const item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  item.command = "codellama.showLog";
  const show = (view: StatusView) => {
    item.text = view.text;
    item.tooltip = view.tooltip;
    item.backgroundColor = view.isError ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
    item.show();
  };
  const settings = () => plainSection(vscode.workspace.getConfiguration("codellama"));
  // Latency changes with every completion, but the server only notifies state changes: ask after each one.
  // (`{}` rather than no params: pygls-based servers reject a request without a params member.)
  const refreshStatus = async () => show(statusView(await client!.sendRequest<ServerStatus>("codellama/status", {})));

  const start = async () => {
    show(startingView());
    const section = settings();
    client = new LanguageClient("codellama", "Code Llama", { command: serverCommand(section), args: serverArgs(section) }, {
      documentSelector: DOCUMENT_SELECTOR,
      initializationOptions: serverSettings(section),
      outputChannel: log,
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          const items = await next(document, position, context, token);
          refreshStatus().catch(() => undefined); // the status bar must never fail a completion
          return items;
        },
      },
    });
    client.registerFeature(noProgressBar);
    let lastState: ServerStatus["state"] | undefined;
    client.onNotification("codellama/didChangeStatus", (status: ServerStatus) => {
      show(statusView(status));
      // What was typed while the model loaded got no answer, and VS Code does not ask again by itself.
      if (status.state === "ready" && lastState !== undefined && lastState !== "ready") {
        vscode.commands.executeCommand("editor.action.inlineSuggest.trigger").then(undefined, () => undefined);
      }
      lastState = status.state;
    });
    client.onDidChangeState((change) => change.newState === State.Stopped && show(failedView("codellama-lsp stopped")));
    try {
      await client.start();
      await refreshStatus();
    } catch (error) {
      show(failedView(`codellama-lsp could not start: ${error instanceof Error ? error.message : String(error)}`));
    }
  };
  const restart = async () => {
    await deactivate();
    await start();
  };

  context.subscriptions.push(
    log,
    item,
    vscode.commands.registerCommand("codellama.toggle", () => {
      const configuration = vscode.workspace.getConfiguration("codellama");
      return configuration.update("enable", !configuration.get("enable", true), toggleTarget());
    }),
    vscode.commands.registerCommand("codellama.restart", restart),
    vscode.commands.registerCommand("codellama.showLog", () => log.show()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (!event.affectsConfiguration("codellama")) return;
      if (RESTART_KEYS.some((key) => event.affectsConfiguration(`codellama.${key}`))) return restart();
      // A stopped server gets the new settings as initializationOptions when it next starts.
      if (!client?.isRunning()) return;
      const params = { settings: { codellama: serverSettings(settings()) } };
      return client.sendNotification(DidChangeConfigurationNotification.type, params);
    }),
  );
  await start();
}

export async function deactivate(): Promise<void> {
  const stopping = client;
  client = undefined;
  if (stopping?.isRunning()) await stopping.stop();
}
