--- :checkhealth codellama: the Neovim side, the server command, and what the running server says.
local M = {}

function M.check()
  local codellama = require("codellama")
  local health = vim.health
  health.start("codellama: Neovim")
  local version = vim.version()
  local builtin = codellama.backend() == require("codellama.builtin")
  health.ok(
    ("Neovim %d.%d.%d, ghost text from %s"):format(
      version.major,
      version.minor,
      version.patch,
      builtin and "vim.lsp.inline_completion" or "this plugin (Neovim < 0.12)"
    )
  )
  if vim.fn.has("nvim-0.10") == 0 then
    health.error("Neovim 0.10 or newer is needed (inline virtual text)")
  end

  health.start("codellama: server")
  local cmd = codellama.config.cmd
  if vim.fn.executable(cmd[1]) == 1 then
    health.ok(("`%s` found: %s"):format(cmd[1], vim.fn.exepath(cmd[1])))
  else
    health.error(("`%s` is not executable"):format(cmd[1]), {
      "install it from a clone as the README says (python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e .), "
        .. "then set cmd = { '/path/to/clone/.venv/bin/codellama-lsp' }",
    })
    return
  end
  local status, err = codellama.request_status(5000)
  if not status then
    health.warn(("no status: %s"):format(err), { "open a file of a configured filetype to start the server" })
    return
  end
  health.ok(
    ("codellama-lsp %s, state: %s%s"):format(
      status.version,
      status.state,
      status.message and status.message ~= vim.NIL and (" (" .. status.message .. ")") or ""
    )
  )
  local report = status.state == "error" and health.error or health.ok
  report(("model: %s on %s, quantization %s"):format(status.model, status.device, status.quantize))
  local latency = status.latencyMs or {}
  local function ms(value)
    return type(value) == "number" and ("%d ms"):format(value) or "-"
  end
  health.info(
    ("%d requests, %d served, %d accepted; latency p50 %s, p95 %s"):format(
      status.requests or 0,
      status.served or 0,
      status.accepted or 0,
      ms(latency.p50),
      ms(latency.p95)
    )
  )
end

return M
