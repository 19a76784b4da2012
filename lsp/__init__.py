"""pygls language server for Code Llama infilling, and the `codellama-lsp` command."""
