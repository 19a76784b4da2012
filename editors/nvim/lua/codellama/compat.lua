--- Differences between the Neovim versions the plugin supports (0.10, 0.11, 0.12+).
local M = {}

local has_011 = vim.fn.has("nvim-0.11") == 1

--- Calls an LSP client method: `client:method(...)` from 0.11, `client.method(...)` before.
function M.call(client, method, ...)
  if has_011 then
    return client[method](client, ...)
  end
  return client[method](...)
end

--- Byte index in `line` of the LSP `character` offset counted in `encoding` units.
function M.byte_index(line, character, encoding)
  if has_011 then
    return vim.str_byteindex(line, encoding, character, false)
  end
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  return vim.str_byteindex(line, character, encoding == "utf-16")
end

M.islist = vim.islist or vim.tbl_islist

return M
