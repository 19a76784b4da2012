--- codellama.nvim: ghost-text completion from a local Code Llama model through codellama-lsp.
---
--- `require("codellama").setup(opts)` starts the server for the configured filetypes and maps
--- the keys. It can be called again (e.g. from a reloaded config): each call starts from the
--- defaults, merges `opts`, and replaces what the previous call set up.

local compat = require("codellama.compat")

local M = {}

-- Languages with plenty of public code, which Code Llama was trained on (the same list as the
-- VS Code extension's, in Neovim's filetype names).
-- stylua: ignore
local filetypes = {
  "c", "cpp", "cs", "css", "cuda", "dart", "dockerfile", "elixir", "erlang", "fsharp", "go", "groovy",
  "haskell", "html", "java", "javascript", "javascriptreact", "json", "julia", "kotlin", "less", "lua",
  "make", "markdown", "objc", "objcpp", "ocaml", "perl", "php", "ps1", "python", "r", "ruby", "rust",
  "scala", "scss", "sh", "sql", "swift", "tex", "toml", "typescript", "typescriptreact", "vue", "xml",
  "yaml", "zig", "zsh",
}

---@class codellama.Keymaps  (false disables one)
---@field accept string|false       whole suggestion
---@field accept_word string|false  up to the end of the next word
---@field accept_line string|false  up to the end of the current line
---@field dismiss string|false
---@field next string|false         next candidate
---@field prev string|false         previous candidate

---@class codellama.Config
---@field cmd string[]       the server command; settings go in `settings`, not here
---@field filetypes string[] where the server starts and completions show
---@field settings table     sent to the server as is, see lsp/PROTOCOL.md (enable, model, device, quantize, maxTokens, multiline, prompt = {...}, ...)
---@field backend "auto"|"builtin"|"plugin"  builtin = vim.lsp.inline_completion (Neovim 0.12+); plugin = this plugin's ghost text; auto picks builtin where it exists
---@field debounce_ms integer  plugin backend: quiet time after a keystroke before asking the server
---@field keymaps codellama.Keymaps  insert mode; each key does its own thing when no suggestion is shown
local defaults = {
  cmd = { "codellama-lsp" },
  filetypes = filetypes,
  settings = { enable = true },
  backend = "auto",
  debounce_ms = 150,
  -- The keys copilot.vim uses, so muscle memory carries over.
  keymaps = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    dismiss = "<C-]>",
    next = "<M-]>",
    prev = "<M-[>",
  },
}

---@type codellama.Config
M.config = vim.deepcopy(defaults)

--- Deep merge where lists (filetypes, cmd) replace rather than merge by index, whatever the
--- Neovim version's vim.tbl_deep_extend does with them.
local function merge(base, override)
  local result = vim.deepcopy(base)
  for key, value in pairs(override or {}) do
    if type(value) == "table" and type(result[key]) == "table" and not compat.islist(value) then
      result[key] = merge(result[key], value)
    else
      result[key] = value
    end
  end
  return result
end

local group = vim.api.nvim_create_augroup("codellama", { clear = true })
local mapped_keys = {} ---@type string[]
local last_status ---@type table?

local function use_builtin()
  local builtin = vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
  if M.config.backend == "auto" then
    return builtin
  end
  return M.config.backend == "builtin"
end

--- The running codellama client, if any (one per Neovim: the model is loaded once).
function M.client()
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  return get({ name = "codellama" })[1]
end

--- The ghost-text implementation in use: `require("codellama.ghost")` or the builtin adapter.
function M.backend()
  return use_builtin() and require("codellama.builtin") or require("codellama.ghost")
end

local function on_status(_, status)
  last_status = status
  if status.state == "error" then
    vim.notify("codellama-lsp: " .. (status.message or "error"), vim.log.levels.ERROR)
  end
  vim.cmd("redrawstatus")
end

--- For a statusline: "Code Llama: loading", "Code Llama 42 ms", "Code Llama: error".
function M.status()
  if not last_status then
    return M.client() and "Code Llama: starting" or ""
  end
  local last = last_status.latencyMs and last_status.latencyMs.last
  if last_status.state == "ready" and type(last) == "number" then
    return ("Code Llama %d ms"):format(last)
  end
  return "Code Llama: " .. last_status.state
end

--- Asks the server for its `codellama/status` (nil, error when no server answers).
function M.request_status(timeout_ms)
  local client = M.client()
  if not client then
    return nil, "codellama-lsp is not running"
  end
  local response = compat.call(client, "request_sync", "codellama/status", vim.empty_dict(), timeout_ms or 2000, 0)
  if not response or response.err then
    return nil, response and vim.inspect(response.err) or "no answer"
  end
  last_status = response.result
  return response.result
end

--- Asks for `codellama/status` in the background and redraws statuslines with its latency.
function M.refresh_status()
  local client = M.client()
  if client then
    compat.call(client, "request", "codellama/status", vim.empty_dict(), function(err, status)
      if not err and status then
        last_status = status
        vim.cmd("redrawstatus")
      end
    end)
  end
end

local function start(bufnr)
  if vim.bo[bufnr].buftype ~= "" then
    return -- help pages, terminals, prompts
  end
  vim.lsp.start({
    name = "codellama",
    cmd = M.config.cmd,
    root_dir = vim.fn.getcwd(),
    init_options = M.config.settings,
    settings = { codellama = M.config.settings },
    handlers = { ["codellama/didChangeStatus"] = on_status },
  }, {
    bufnr = bufnr,
    -- One server for every buffer and project: the model is loaded once. (Not one that is
    -- stopping: vim.lsp lists a client until its process has exited.)
    reuse_client = function(client, config)
      return client.name == config.name and not compat.call(client, "is_stopped")
    end,
  })
end

--- Sends the current settings to the running server, as a settings UI would.
function M.push_settings()
  local client = M.client()
  if client then
    client.settings = { codellama = M.config.settings }
    compat.call(client, "notify", "workspace/didChangeConfiguration", { settings = client.settings })
  end
end

function M.toggle()
  M.config.settings.enable = M.config.settings.enable == false
  M.push_settings()
  if not M.config.settings.enable then
    M.backend().dismiss()
  end
  vim.notify("Code Llama completions " .. (M.config.settings.enable and "on" or "off"))
end

function M.restart()
  local client = M.client()
  if client then
    compat.call(client, "stop")
    -- A new start while the old client is still shutting down would be handed the old one.
    vim.wait(5000, function()
      return compat.call(client, "is_stopped")
    end, 20)
  end
  last_status = nil
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(M.config.filetypes, vim.bo[bufnr].filetype) then
      start(bufnr)
    end
  end
end

--- An insert-mode key that acts on a shown suggestion and otherwise types itself.
local function map(lhs, action)
  if not lhs then
    return
  end
  vim.keymap.set("i", lhs, function()
    local backend = M.backend()
    if backend.visible() then
      -- <Cmd> runs after the mapping returns, outside its textlock, in order with typeahead.
      return ("<Cmd>lua require('codellama').backend().%s()<CR>"):format(action)
    end
    return lhs
  end, { expr = true, replace_keycodes = true, silent = true, desc = "codellama: " .. action })
  table.insert(mapped_keys, lhs)
end

---@param opts? codellama.Config
function M.setup(opts)
  M.config = merge(defaults, opts)
  group = vim.api.nvim_create_augroup("codellama", { clear = true })
  for _, lhs in ipairs(mapped_keys) do
    pcall(vim.keymap.del, "i", lhs)
  end
  mapped_keys = {}
  local keys = M.config.keymaps
  map(keys.accept, "accept")
  map(keys.accept_word, "accept_word")
  map(keys.accept_line, "accept_line")
  map(keys.dismiss, "dismiss")
  map(keys.next, "next")
  map(keys.prev, "prev")

  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = M.config.filetypes,
    callback = function(args)
      start(args.buf)
    end,
  })
  vim.api.nvim_create_autocmd("LspAttach", {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == "codellama" then
        M.backend().attach(args.buf, client.id)
      end
    end,
  })
  -- What the user copies is a strong hint of what comes next: the server keeps it as context.
  vim.api.nvim_create_autocmd("TextYankPost", {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_clients({ bufnr = args.buf, name = "codellama" })[1]
      if client and vim.v.event.operator == "y" then
        local text = table.concat(vim.v.event.regcontents, "\n")
        compat.call(client, "notify", "codellama/didYank", { uri = vim.uri_from_bufnr(args.buf), text = text })
      end
    end,
  })
  vim.api.nvim_create_user_command("CodellamaToggle", M.toggle, { desc = "Turn Code Llama completions on or off" })
  vim.api.nvim_create_user_command("CodellamaRestart", M.restart, { desc = "Restart codellama-lsp" })
  vim.api.nvim_create_user_command("CodellamaStatus", function()
    local status, err = M.request_status()
    print(status and vim.inspect(status) or err)
  end, { desc = "Show codellama-lsp's status" })

  -- Buffers opened before setup() (e.g. `nvim file.py` with a lazily loaded plugin).
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(M.config.filetypes, vim.bo[bufnr].filetype) then
      start(bufnr)
    end
  end
  M.push_settings()
end

return M
