/**
 * VS Code language ids of the languages Code Llama was trained on (the paper's code data:
 * mostly Python, C++, Java, PHP, TypeScript/JavaScript, C#, Bash and friends). package.json's
 * activationEvents list the same ids; a test keeps the two in step.
 */
export const LANGUAGES = [
  "bat", "c", "clojure", "coffeescript", "cpp", "csharp", "css", "cuda-cpp", "dart", "dockerfile",
  "elixir", "erlang", "fsharp", "go", "groovy", "haskell", "html", "java", "javascript",
  "javascriptreact", "json", "julia", "kotlin", "latex", "less", "lua", "makefile", "markdown",
  "objective-c", "objective-cpp", "ocaml", "perl", "php", "powershell", "python", "r", "ruby",
  "rust", "scala", "scss", "shellscript", "sql", "swift", "toml", "typescript",
  "typescriptreact", "vue", "xml", "yaml", "zig",
] as const;

/** Files on disk and unsaved editors; not output panes, git diffs or settings UIs. */
export const DOCUMENT_SELECTOR = LANGUAGES.flatMap((language) => [
  { scheme: "file", language },
  { scheme: "untitled", language },
]);
