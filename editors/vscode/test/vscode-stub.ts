/**
 * A stand-in for the `vscode` module, so the extension and the real vscode-languageclient run in
 * plain node (the npm registry has no VS Code build to test in). It implements, with VS Code's
 * semantics, the parts the tests look at: configuration, commands, the status-bar item, output
 * channels, documents and the inline-completion provider registry. Everything else the
 * language client touches (diagnostics, file watchers, other providers...) is a no-op that
 * returns a disposable; `unimplemented` lists what was reached that way.
 *
 * `install()` must run before anything imports "vscode".
 */
import Module from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

type Listener<T> = (value: T) => unknown;

export class Disposable {
  constructor(private readonly onDispose: () => void = () => undefined) {}
  static from(...items: { dispose(): unknown }[]): Disposable {
    return new Disposable(() => items.forEach((item) => item.dispose()));
  }
  dispose(): void {
    this.onDispose();
  }
}

export class EventEmitter<T> {
  private listeners = new Set<Listener<T>>();
  /** VS Code's Event: (listener, thisArgs?, disposables?) => Disposable. */
  event = (listener: Listener<T>, thisArgs?: unknown, disposables?: Disposable[]): Disposable => {
    const bound: Listener<T> = (value) => listener.call(thisArgs, value);
    this.listeners.add(bound);
    const disposable = new Disposable(() => this.listeners.delete(bound));
    disposables?.push(disposable);
    return disposable;
  };
  fire(value: T): void {
    for (const listener of [...this.listeners]) listener(value);
  }
  dispose(): void {
    this.listeners.clear();
  }
}

export class CancellationTokenSource {
  private emitter = new EventEmitter<void>();
  token = { isCancellationRequested: false, onCancellationRequested: this.emitter.event };
  cancel(): void {
    if (this.token.isCancellationRequested) return;
    this.token.isCancellationRequested = true;
    this.emitter.fire();
  }
  dispose(): void {
    this.emitter.dispose();
  }
}

export class CancellationError extends Error {}

export class Uri {
  private constructor(
    readonly scheme: string,
    readonly path: string,
  ) {}
  static file(path: string): Uri {
    return new Uri("file", path);
  }
  static parse(value: string): Uri {
    const match = /^([a-z][a-z0-9+.-]*):(?:\/\/)?(.*)$/i.exec(value);
    if (!match) throw new Error(`not a URI: ${value}`);
    return new Uri(match[1], decodeURIComponent(match[2]));
  }
  get fsPath(): string {
    return this.path;
  }
  toString(): string {
    return this.scheme === "file" ? `file://${encodeURI(this.path)}` : `${this.scheme}:${this.path}`;
  }
  toJSON(): string {
    return this.toString();
  }
}

export class Position {
  constructor(
    readonly line: number,
    readonly character: number,
  ) {}
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(start: Position | number, end: Position | number, endLine?: number, endCharacter?: number) {
    this.start = typeof start === "number" ? new Position(start, end as number) : start;
    this.end = typeof start === "number" ? new Position(endLine!, endCharacter!) : (end as Position);
  }
  get isEmpty(): boolean {
    return this.start.line === this.end.line && this.start.character === this.end.character;
  }
}

export class InlineCompletionItem {
  constructor(
    public insertText: string | { value: string },
    public range?: Range,
    public command?: { title: string; command: string; arguments?: unknown[] },
  ) {}
}

export class InlineCompletionList {
  constructor(public items: InlineCompletionItem[]) {}
}

export class SnippetString {
  constructor(public value: string) {}
}

export class ThemeColor {
  constructor(readonly id: string) {}
}

export enum InlineCompletionTriggerKind {
  Invoke = 0,
  Automatic = 1,
}
export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}
export enum ConfigurationTarget {
  Global = 1,
  Workspace = 2,
  WorkspaceFolder = 3,
}
export enum LogLevel {
  Off = 0,
  Trace = 1,
  Debug = 2,
  Info = 3,
  Warning = 4,
  Error = 5,
}
export enum ProgressLocation {
  SourceControl = 1,
  Window = 10,
  Notification = 15,
}

export class CodeActionKind {
  static readonly Empty = new CodeActionKind("");
  static readonly QuickFix = new CodeActionKind("quickfix");
  static readonly Refactor = new CodeActionKind("refactor");
  static readonly RefactorExtract = new CodeActionKind("refactor.extract");
  static readonly RefactorInline = new CodeActionKind("refactor.inline");
  static readonly RefactorMove = new CodeActionKind("refactor.move");
  static readonly RefactorRewrite = new CodeActionKind("refactor.rewrite");
  static readonly Source = new CodeActionKind("source");
  static readonly SourceOrganizeImports = new CodeActionKind("source.organizeImports");
  static readonly SourceFixAll = new CodeActionKind("source.fixAll");
  static readonly Notebook = new CodeActionKind("notebook");
  constructor(readonly value: string) {}
}

/** A text document, enough for text synchronization and provider calls. */
export class TextDocument {
  version = 1;
  isClosed = false;
  isDirty = false;
  isUntitled = false;
  eol = 1;
  constructor(
    readonly uri: Uri,
    readonly languageId: string,
    private text: string,
  ) {}
  get fileName(): string {
    return this.uri.fsPath;
  }
  get lineCount(): number {
    return this.text.split("\n").length;
  }
  getText(): string {
    return this.text;
  }
  /** Replaces the whole text, as an editor edit would, and returns the change event. */
  setText(text: string): { document: TextDocument; contentChanges: unknown[]; reason: undefined } {
    const lines = this.text.split("\n");
    const range = new Range(0, 0, lines.length - 1, lines[lines.length - 1].length);
    const change = { range, rangeOffset: 0, rangeLength: this.text.length, text };
    this.text = text;
    this.version += 1;
    return { document: this, contentChanges: [change], reason: undefined };
  }
  lineAt(line: number): { text: string; range: Range } {
    const text = this.text.split("\n")[line];
    return { text, range: new Range(line, 0, line, text.length) };
  }
  offsetAt(position: Position): number {
    const lines = this.text.split("\n");
    return lines.slice(0, position.line).reduce((sum, line) => sum + line.length + 1, 0) + position.character;
  }
  positionAt(offset: number): Position {
    const before = this.text.slice(0, offset).split("\n");
    return new Position(before.length - 1, before[before.length - 1].length);
  }
}

/** VS Code's settings: defaults from package.json's contributes.configuration, plus user values. */
class Configuration {
  readonly values = new Map<string, unknown>();
  readonly changed = new EventEmitter<{ affectsConfiguration(section: string): boolean }>();

  loadDefaults(packageJsonPath: string): void {
    const manifest = JSON.parse(readFileSync(packageJsonPath, "utf8"));
    for (const [key, schema] of Object.entries(manifest.contributes.configuration.properties)) {
      this.values.set(key, (schema as { default?: unknown }).default);
    }
  }

  section(name: string) {
    const prefix = `${name}.`;
    const data: Record<string, unknown> = {};
    for (const [key, value] of this.values) {
      if (!key.startsWith(prefix)) continue;
      // "codellama.trace.server" becomes data.trace.server, as VS Code nests dotted keys.
      const parts = key.slice(prefix.length).split(".");
      let node = data;
      for (const part of parts.slice(0, -1)) node = (node[part] ??= {}) as Record<string, unknown>;
      node[parts[parts.length - 1]] = structuredClone(value);
    }
    const get = <T>(key: string, fallback?: T): T => {
      const value = this.values.get(prefix + key);
      if (value !== undefined) return value as T;
      let node: unknown = data;
      for (const part of key.split(".")) node = (node as Record<string, unknown> | undefined)?.[part];
      return (node ?? fallback) as T;
    };
    const update = async (key: string, value: unknown) => this.set(prefix + key, value);
    return { ...data, get, has: (key: string) => get(key) !== undefined, inspect: () => undefined, update };
  }

  set(key: string, value: unknown): void {
    this.values.set(key, value);
    this.changed.fire({ affectsConfiguration: (section) => key === section || key.startsWith(`${section}.`) });
  }
}

export interface StatusBarItemStub {
  text: string;
  tooltip: string | undefined;
  command: string | undefined;
  backgroundColor: ThemeColor | undefined;
  visible: boolean;
  show(): void;
  hide(): void;
  dispose(): void;
}

/** Everything a test inspects, reset by `reset()`. */
export const recorded = {
  statusBarItems: [] as StatusBarItemStub[],
  outputLines: [] as string[],
  shownOutputChannels: [] as string[],
  messages: [] as { severity: string; message: string }[],
  inlineProviders: [] as { selector: unknown; provider: InlineProvider }[],
  commands: new Map<string, (...args: unknown[]) => unknown>(),
  /** Every executeCommand, VS Code's own commands included (which the stub does not run). */
  executed: [] as string[],
  unimplemented: new Set<string>(),
};

/** The item highlighted in the suggest menu, as VS Code passes it to inline-completion providers. */
export type SelectedCompletionInfo = { range: Range; text: string };

export interface InlineProvider {
  provideInlineCompletionItems(
    document: TextDocument,
    position: Position,
    context: { triggerKind: InlineCompletionTriggerKind; selectedCompletionInfo: SelectedCompletionInfo | undefined },
    token: CancellationTokenSource["token"],
  ): Promise<InlineCompletionList | InlineCompletionItem[] | undefined | null>;
}

const configuration = new Configuration();
const documentOpened = new EventEmitter<TextDocument>();
const documentChanged = new EventEmitter<unknown>();
const documentClosed = new EventEmitter<TextDocument>();
const textDocuments: TextDocument[] = [];

function outputChannel(name: string) {
  const append = (prefix: string) => (message: string) => {
    recorded.outputLines.push(`[${name}] ${prefix}${message}`);
    if (process.env.CODELLAMA_TEST_VERBOSE) process.stderr.write(`[${name}] ${prefix}${message}\n`);
  };
  return {
    name,
    logLevel: LogLevel.Info,
    onDidChangeLogLevel: new EventEmitter<LogLevel>().event,
    append: append(""),
    appendLine: append(""),
    replace: append(""),
    trace: append("trace "),
    debug: append("debug "),
    info: append("info "),
    warn: append("warn "),
    error: (message: string | Error) => append("error ")(String(message)),
    clear: () => undefined,
    show: () => recorded.shownOutputChannels.push(name),
    hide: () => undefined,
    dispose: () => undefined,
  };
}

function matchScore(selector: unknown, document: TextDocument): number {
  const filters = Array.isArray(selector) ? selector : [selector];
  return filters.some((filter) =>
    typeof filter === "string"
      ? filter === document.languageId
      : (filter.language === undefined || filter.language === document.languageId) &&
        (filter.scheme === undefined || filter.scheme === document.uri.scheme),
  )
    ? 10
    : 0;
}

const showMessage = (severity: string) => async (message: string) => {
  recorded.messages.push({ severity, message });
  return undefined;
};

/** Members nobody implemented: no-op functions returning disposables, recorded by name. */
function unimplemented(name: string): unknown {
  return new Proxy(function () {}, {
    get: (_target, property) => {
      if (property === "then" || typeof property === "symbol") return undefined;
      if (property === "dispose") return () => undefined;
      return unimplemented(`${name}.${String(property)}`);
    },
    apply: () => {
      recorded.unimplemented.add(name);
      return new Disposable();
    },
  });
}

function withFallback<T extends object>(name: string, implemented: T): T {
  return new Proxy(implemented, {
    get: (target, property) =>
      property in target || typeof property === "symbol"
        ? (target as Record<string | symbol, unknown>)[property]
        : unimplemented(`${name}.${String(property)}`),
  });
}

const vscode = withFallback("vscode", {
  version: "1.95.0",
  env: withFallback("env", {
    appName: "Visual Studio Code",
    language: "en",
    machineId: "test",
    sessionId: "test",
    uiKind: 1,
  }),
  Disposable,
  EventEmitter,
  CancellationTokenSource,
  CancellationError,
  Uri,
  Position,
  Range,
  InlineCompletionItem,
  InlineCompletionList,
  InlineCompletionTriggerKind,
  SnippetString,
  ThemeColor,
  StatusBarAlignment,
  ConfigurationTarget,
  LogLevel,
  ProgressLocation,
  CodeActionKind,
  window: withFallback("window", {
    activeTextEditor: undefined,
    visibleTextEditors: [],
    tabGroups: { all: [], onDidChangeTabs: new EventEmitter().event, onDidChangeTabGroups: new EventEmitter().event },
    onDidChangeVisibleTextEditors: new EventEmitter().event,
    onDidChangeActiveTextEditor: new EventEmitter().event,
    createOutputChannel: outputChannel,
    createStatusBarItem: (): StatusBarItemStub => {
      const item: StatusBarItemStub = {
        text: "",
        tooltip: undefined,
        command: undefined,
        backgroundColor: undefined,
        visible: false,
        show: () => void (item.visible = true),
        hide: () => void (item.visible = false),
        dispose: () => void (item.visible = false),
      };
      recorded.statusBarItems.push(item);
      return item;
    },
    showInformationMessage: showMessage("info"),
    showWarningMessage: showMessage("warning"),
    showErrorMessage: showMessage("error"),
    // The server reports model loading with $/progress; run the task with a sink for reports.
    withProgress: <R>(_options: unknown, task: (progress: { report(value: unknown): void }, token: unknown) => R) =>
      task({ report: () => undefined }, new CancellationTokenSource().token),
  }),
  workspace: withFallback("workspace", {
    workspaceFolders: undefined,
    textDocuments,
    notebookDocuments: [],
    getConfiguration: (section: string) => configuration.section(section),
    onDidChangeConfiguration: configuration.changed.event,
    onDidOpenTextDocument: documentOpened.event,
    onDidChangeTextDocument: documentChanged.event,
    onDidCloseTextDocument: documentClosed.event,
  }),
  languages: withFallback("languages", {
    match: matchScore,
    registerInlineCompletionItemProvider: (selector: unknown, provider: InlineProvider) => {
      const entry = { selector, provider };
      recorded.inlineProviders.push(entry);
      return new Disposable(() => recorded.inlineProviders.splice(recorded.inlineProviders.indexOf(entry), 1));
    },
  }),
  commands: withFallback("commands", {
    registerCommand: (id: string, callback: (...args: unknown[]) => unknown) => {
      if (recorded.commands.has(id)) throw new Error(`command '${id}' already exists`);
      recorded.commands.set(id, callback);
      return new Disposable(() => recorded.commands.delete(id));
    },
    executeCommand: async (id: string, ...args: unknown[]) => {
      recorded.executed.push(id);
      const command = recorded.commands.get(id);
      if (!command) throw new Error(`command '${id}' not found`);
      return command(...args);
    },
  }),
});

/** Test-side controls: open, edit and close documents, set settings. */
export const editor = {
  /** Loads package.json's setting defaults, as VS Code does for an installed extension. */
  loadDefaults: (packageJsonPath = join(__dirname, "..", "..", "package.json")) =>
    configuration.loadDefaults(packageJsonPath),
  setSetting: (key: string, value: unknown) => configuration.set(key, value),
  getSetting: (key: string) => configuration.values.get(key),
  open(path: string, languageId: string, text: string): TextDocument {
    const document = new TextDocument(Uri.file(path), languageId, text);
    textDocuments.push(document);
    documentOpened.fire(document);
    return document;
  },
  edit(document: TextDocument, text: string): void {
    documentChanged.fire(document.setText(text));
  },
  close(document: TextDocument): void {
    textDocuments.splice(textDocuments.indexOf(document), 1);
    document.isClosed = true;
    documentClosed.fire(document);
  },
};

export function reset(): void {
  recorded.statusBarItems.length = 0;
  recorded.outputLines.length = 0;
  recorded.shownOutputChannels.length = 0;
  recorded.messages.length = 0;
  recorded.inlineProviders.length = 0;
  recorded.commands.clear();
  recorded.unimplemented.clear();
  configuration.values.clear();
  textDocuments.length = 0;
}

let installed = false;

/** Makes `require("vscode")` return the stub. */
export function install(): typeof vscode {
  if (installed) return vscode;
  installed = true;
  const moduleInternals = Module as unknown as {
    _resolveFilename: (request: string, ...rest: unknown[]) => string;
  };
  const resolve = moduleInternals._resolveFilename;
  moduleInternals._resolveFilename = function (request: string, ...rest: unknown[]) {
    return request === "vscode" ? "vscode" : resolve.call(this, request, ...rest);
  };
  const cached = new Module("vscode");
  cached.exports = vscode;
  cached.loaded = true;
  require.cache["vscode"] = cached;
  return vscode;
}
