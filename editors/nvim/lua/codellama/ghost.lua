--- Ghost text for Neovim versions without vim.lsp.inline_completion (0.10, 0.11).
---
--- After each keystroke in insert mode (debounced) the plugin asks the server for
--- textDocument/inlineCompletion, cancelling the request it still waits for, and shows the
--- answer as extmarks at the cursor: the first line as inline virtual text, the others as
--- virtual lines below. Typing the suggestion's next characters keeps the rest shown without
--- a new request; any other edit or cursor move replaces it. Leaving insert mode clears it.

local compat = require("codellama.compat")

local M = {}

M.namespace = vim.api.nvim_create_namespace("codellama.ghost")
-- Comment's colour, with a grey for terminals without true colour: 0.11's default scheme gives
-- Comment a GUI colour only, and linked to it the ghost text looked like code in such a terminal.
local function define_highlights()
  local comment = vim.api.nvim_get_hl(0, { name = "Comment", link = false })
  vim.api.nvim_set_hl(0, "CodellamaSuggestion", {
    fg = comment.fg,
    ctermfg = comment.ctermfg or 244,
    italic = comment.italic,
    default = true,
  })
end
define_highlights()
vim.api.nvim_create_autocmd("ColorScheme", { callback = define_highlights })
vim.api.nvim_set_hl(0, "CodellamaSuggestionHint", { link = "NonText", default = true })

---@class codellama.Suggestion
---@field items table[]      the server's InlineCompletionItems
---@field texts string[]     for each item, the text it adds at the cursor ("" when it cannot be shown)
---@field overwrites string[] for each item, the text after the cursor it replaces (closing brackets it repeats)
---@field index integer      the item shown
---@field shown string       what is left to show of texts[index] (typing through it shortens it)
---@field row integer        0-based row and byte column of the cursor the suggestion is anchored at
---@field col integer
---@field client_id integer

---@class codellama.BufferState
---@field client_id integer
---@field timer? uv.uv_timer_t
---@field pending? { client: table, id: integer }
---@field suggestion? codellama.Suggestion
local states = {} ---@type table<integer, codellama.BufferState>

local function config()
  return require("codellama").config
end

local function cursor()
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  return row - 1, col
end

local function in_insert_mode()
  return vim.api.nvim_get_mode().mode:sub(1, 1) == "i"
end

--- The text an item adds at the cursor, and the text after the cursor it replaces. Items
--- replace `range` (start of line .. cursor, or a little past it over closing brackets the
--- completion repeats) with `insertText` (the line before the cursor + the completion), so the
--- ghost text is what `insertText` has beyond the text already before the cursor. nil when the
--- item is not of that shape (it would rewrite text before the cursor, which ghost text cannot show).
---@param item table  lsp.InlineCompletionItem
---@param line string the cursor's line
---@param position table the lsp.Position the request was made at
---@param col integer  the cursor's byte column
---@param encoding string the client's offset encoding
---@return string? added, string? overwritten
function M.added_text(item, line, position, col, encoding)
  local insert = item.insertText
  if type(insert) ~= "string" then
    return nil -- snippets are not produced by codellama-lsp
  end
  if not item.range then
    return insert, ""
  end
  local range = item.range
  if range.start.line ~= position.line or range["end"].line ~= position.line then
    return nil
  end
  if range["end"].character < position.character or range.start.character > position.character then
    return nil
  end
  local before = line:sub(compat.byte_index(line, range.start.character, encoding) + 1, col)
  if insert:sub(1, #before) ~= before then
    return nil
  end
  local overwritten = line:sub(col + 1, compat.byte_index(line, range["end"].character, encoding))
  return insert:sub(#before + 1), overwritten
end

--- What the ghost text shows of `text`: on one line, the closing characters it shares with
--- the text after the cursor are left to that text, so the screen shows the line as accepting
--- would make it.
function M.display_text(text, overwritten)
  if overwritten ~= "" and not text:find("\n") and text:sub(-#overwritten) == overwritten then
    return text:sub(1, #text - #overwritten)
  end
  return text
end

--- The next word of `text`, with the whitespace before it; a line break and the next line's
--- indentation count as one word, so accepting word by word walks through every line.
function M.next_word(text)
  return text:match("^\n[ \t]*")
    or text:match("^[ \t]*[%w_]+")
    or text:match("^[ \t]*[^%w_%s]+")
    or text:match("^[ \t]+")
    or text
end

--- The rest of the current line of `text`; at a line break, the break and the next line.
function M.next_line(text)
  return text:match("^[^\n]+") or text:match("^\n[^\n]*") or text
end

local function hide(bufnr)
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  end
end

local function render(bufnr)
  hide(bufnr)
  local suggestion = states[bufnr] and states[bufnr].suggestion
  if not suggestion then
    return
  end
  local shown = M.display_text(suggestion.shown, suggestion.overwrites[suggestion.index])
  if shown == "" then
    -- Only characters already on screen are left: nothing to offer, and keys must fall through.
    states[bufnr].suggestion = nil
    return
  end
  local lines = vim.split(shown, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "CodellamaSuggestion" } }
  end
  local virt_text = { { lines[1], "CodellamaSuggestion" } }
  local candidates = 0
  for _, text in ipairs(suggestion.texts) do
    candidates = candidates + (text ~= "" and 1 or 0)
  end
  if candidates > 1 then
    -- Which candidate this is, after its last line, in another highlight: not part of the text.
    local hint = { (" (%d/%d)"):format(suggestion.index, candidates), "CodellamaSuggestionHint" }
    table.insert(#virt_lines > 0 and virt_lines[#virt_lines] or virt_text, hint)
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.namespace, suggestion.row, suggestion.col, {
    virt_text = virt_text,
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

local function cancel(state)
  if state.timer then
    state.timer:stop()
    state.timer:close()
    state.timer = nil
  end
  if state.pending then
    pcall(compat.call, state.pending.client, "cancel_request", state.pending.id)
    state.pending = nil
  end
end

--- Clears the suggestion and forgets pending work for `bufnr`.
function M.clear(bufnr)
  local state = states[bufnr]
  if state then
    cancel(state)
    state.suggestion = nil
  end
  hide(bufnr)
end

--- Asks the server at the cursor. `cycling` (a step of +1 or -1): the user asked for another
--- candidate, so ask explicitly (triggerKind Invoked: the server answers with several) and show
--- the one `cycling` steps after the first.
local function request(bufnr, cycling)
  local state = states[bufnr]
  local client = state and vim.lsp.get_client_by_id(state.client_id)
  if not client or bufnr ~= vim.api.nvim_get_current_buf() or not in_insert_mode() then
    return
  end
  local row, col = cursor()
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = cycling and 1 or 2 } -- Invoked, or Automatic: the user is typing
  local ok, id
  ok, id = compat.call(client, "request", "textDocument/inlineCompletion", params, function(err, result)
    if not state.pending or state.pending.id ~= id then
      return -- superseded
    end
    state.pending = nil
    if err then
      vim.lsp.log.warn("codellama: inlineCompletion failed", err)
      return
    end
    -- Drop an answer to a question that no longer stands.
    local now_row, now_col = cursor()
    local stale = vim.api.nvim_get_current_buf() ~= bufnr
      or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
      or now_row ~= row
      or now_col ~= col
      or not in_insert_mode()
    if stale or not result then
      return
    end
    local items = result.items or result
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
    local texts, overwrites = {}, {}
    local first
    for i, item in ipairs(items) do
      local added, overwritten = M.added_text(item, line, params.position, col, client.offset_encoding)
      -- An item that only repeats what follows the cursor adds nothing to show.
      local visible = added and M.display_text(added, overwritten) ~= ""
      texts[i], overwrites[i] = visible and added or "", visible and overwritten or ""
      first = first or (visible and i or nil)
    end
    if not first then
      return
    end
    local index = first
    if cycling then
      for _ = 1, #items do -- the next visible candidate in the direction asked
        index = (index - 1 + cycling) % #items + 1
        if texts[index] ~= "" then
          break
        end
      end
    end
    state.suggestion = {
      items = items,
      texts = texts,
      overwrites = overwrites,
      index = index,
      shown = texts[index],
      asked = cycling ~= nil,
      row = row,
      col = col,
      client_id = client.id,
    }
    render(bufnr)
    require("codellama").refresh_status() -- the latency in statuslines
  end, bufnr)
  if ok then
    state.pending = { client = client, id = id }
  end
end

--- TextChangedI / CursorMovedI: keep a suggestion the user is typing through, else replace it.
local function on_edit(bufnr)
  local state = states[bufnr]
  if not state then
    return
  end
  local suggestion = state.suggestion
  if suggestion then
    local row, col = cursor()
    local typed = ""
    if row > suggestion.row or (row == suggestion.row and col >= suggestion.col) then
      typed = table.concat(vim.api.nvim_buf_get_text(bufnr, suggestion.row, suggestion.col, row, col, {}), "\n")
    else
      typed = nil -- the cursor moved back
    end
    if typed and #typed < #suggestion.shown and suggestion.shown:sub(1, #typed) == typed then
      suggestion.shown = suggestion.shown:sub(#typed + 1)
      suggestion.row, suggestion.col = row, col
      render(bufnr)
      return
    end
  end
  M.clear(bufnr)
  if require("codellama").config.settings.enable == false then
    return
  end
  state.timer = vim.uv.new_timer()
  state.timer:start(
    config().debounce_ms,
    0,
    vim.schedule_wrap(function()
      if state.timer then
        state.timer:close()
        state.timer = nil
      end
      request(bufnr)
    end)
  )
end

--- Starts ghost text in `bufnr` for the client `client_id`. Calling it again changes nothing.
function M.attach(bufnr, client_id)
  if states[bufnr] then
    states[bufnr].client_id = client_id
    return
  end
  states[bufnr] = { client_id = client_id }
  local group = vim.api.nvim_create_augroup("codellama.ghost." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_edit(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "BufWipeout", "LspDetach" }, {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.event == "LspDetach" and args.data.client_id ~= states[bufnr].client_id then
        return
      end
      M.clear(bufnr)
      states[bufnr] = nil
      vim.api.nvim_del_augroup_by_id(group)
    end,
  })
end

--- Whether a suggestion is shown in the current buffer.
function M.visible()
  local state = states[vim.api.nvim_get_current_buf()]
  return state ~= nil and state.suggestion ~= nil
end

--- The shown suggestion's text (what accepting it would insert), or nil.
function M.shown_text()
  local state = states[vim.api.nvim_get_current_buf()]
  return state and state.suggestion and state.suggestion.shown
end

--- Inserts `piece`, the start of the shown text, at the cursor and moves the cursor past it.
--- The last piece also replaces the closing characters after the cursor that the item repeats.
local function insert(bufnr, piece)
  local state = states[bufnr]
  local suggestion = state.suggestion
  local row, col = cursor()
  if row ~= suggestion.row or col ~= suggestion.col then
    M.clear(bufnr) -- the cursor moved without an event (can only happen mid-mapping)
    return
  end
  local replace_to = col
  local overwritten = suggestion.overwrites[suggestion.index]
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1]
  if #piece == #suggestion.shown and line:sub(col + 1, col + #overwritten) == overwritten then
    replace_to = col + #overwritten
  end
  local lines = vim.split(piece, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row, col, row, replace_to, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  suggestion.shown = suggestion.shown:sub(#piece + 1)
  suggestion.row, suggestion.col = end_row, end_col
  if suggestion.shown ~= "" then
    render(bufnr) -- the TextChangedI that follows sees nothing typed past the anchor and keeps it
    return
  end
  -- All of it is in: tell the server, which counts accepted completions.
  local item = suggestion.items[suggestion.index]
  local client = vim.lsp.get_client_by_id(suggestion.client_id)
  M.clear(bufnr)
  if client and item.command then
    compat.call(client, "request", "workspace/executeCommand", item.command, function() end, bufnr)
  end
end

local function with_suggestion(action)
  return function()
    local bufnr = vim.api.nvim_get_current_buf()
    local state = states[bufnr]
    if state and state.suggestion then
      action(bufnr, state.suggestion)
    end
  end
end

M.accept = with_suggestion(function(bufnr, suggestion)
  insert(bufnr, suggestion.shown)
end)

M.accept_word = with_suggestion(function(bufnr, suggestion)
  insert(bufnr, M.next_word(suggestion.shown))
end)

M.accept_line = with_suggestion(function(bufnr, suggestion)
  insert(bufnr, M.next_line(suggestion.shown))
end)

--- Hides the suggestion until the next keystroke.
function M.dismiss()
  M.clear(vim.api.nvim_get_current_buf())
end

local function cycle(step)
  return with_suggestion(function(bufnr, suggestion)
    if not suggestion.asked and suggestion.shown == suggestion.texts[suggestion.index] then
      request(bufnr, step) -- typing got one candidate: ask for several
      return
    end
    local n = #suggestion.items
    local index = suggestion.index
    for _ = 1, n do
      index = (index - 1 + step) % n + 1
      if suggestion.texts[index] ~= "" then
        break
      end
    end
    -- Only a suggestion nobody has typed into can switch: the others may not match what was typed.
    if index ~= suggestion.index and suggestion.shown == suggestion.texts[suggestion.index] then
      suggestion.index, suggestion.shown = index, suggestion.texts[index]
      render(bufnr)
    end
  end)
end

M.next = cycle(1)
M.prev = cycle(-1)

return M
