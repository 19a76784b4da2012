--- The same interface as codellama.ghost, on Neovim 0.12's vim.lsp.inline_completion, which
--- requests, debounces, renders and clears by itself. Only what it lacks is added here:
--- accepting a word or a line, and dismissing.

local M = {}

local function visible_extmarks(bufnr)
  local namespace = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  return namespace and vim.api.nvim_buf_get_extmarks(bufnr, namespace, 0, -1, {}) or {}
end

function M.attach(bufnr, client_id)
  vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client_id })
end

function M.visible()
  return #visible_extmarks(vim.api.nvim_get_current_buf()) > 0
end

function M.accept()
  vim.lsp.inline_completion.get()
end

--- Inserts the start of an item's text, as chosen by `cut` (ghost.next_word / next_line).
local function accept_part(cut)
  vim.lsp.inline_completion.get({
    on_accept = function(item)
      local text = item.insert_text
      if type(text) ~= "string" then
        return
      end
      local row, col = unpack(vim.api.nvim_win_get_cursor(0))
      if item.range then
        -- The item replaces range (line start .. cursor) with text: skip what is already there.
        local line = vim.api.nvim_get_current_line()
        local replaced = line:sub(item.range.start.col + 1, col)
        if text:sub(1, #replaced) ~= replaced then
          return
        end
        text = text:sub(#replaced + 1)
      end
      local lines = vim.split(cut(text), "\n", { plain = true })
      vim.api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
      vim.api.nvim_win_set_cursor(0, { row + #lines - 1, (#lines == 1 and col or 0) + #lines[#lines] })
    end,
  })
end

function M.accept_word()
  accept_part(require("codellama.ghost").next_word)
end

function M.accept_line()
  accept_part(require("codellama.ghost").next_line)
end

function M.dismiss()
  -- 0.12 has no public dismiss; turning the buffer off and on drops the shown item.
  local bufnr = vim.api.nvim_get_current_buf()
  if vim.lsp.inline_completion.is_enabled({ bufnr = bufnr }) then
    vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
end

function M.next()
  vim.lsp.inline_completion.select({ count = 1 })
end

function M.prev()
  vim.lsp.inline_completion.select({ count = -1 })
end

return M
