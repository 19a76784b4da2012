"""The infilling benchmark (`eval`): HumanEval infilling pass@1 and exact match on repository lines.

Run it as `python -m training.evaluation --model PATH` (or through `codellama-train eval`).

Protocol, and where each choice comes from:

- Data: OpenAI's human-eval-infilling single-line (1033 tasks) and multi-line (5815) sets,
  shipped in `data/` with their MIT licence.
- Program and verdict: `prompt + completion + suffix + "\\n" + test + "\\n" + f"check({entry_point})"`
  must run without error, with a 3 s timeout (OpenAI's `check_correctness` and its default
  `--timeout=3.0`). Here it runs in a separate, resource-limited process (`sandbox.py`).
- Prompts: Meta's reference PSM / SPM token layouts (`engine.prompts`), without token
  healing by default (the tasks cut at line boundaries; `--token-healing` measures the
  server's setting).
- Decoding: greedy (Code Llama paper, Table 14: greedy pass@1), one sample per task.
- Stopping: generation ends at <EOT> (Meta's `text_infilling`) or the token limit. Single-line
  tasks also stop at the first newline and score that one line plus "\\n", since the masked
  middle is exactly one line ending in "\\n" (as lm-evaluation-harness's
  humaneval_single_line_infilling stops at "\\n"; re-adding the newline keeps a correct line
  from being glued to the suffix's first line). Multi-line completions are scored as
  generated, up to <EOT>, as OpenAI's harness and lm-evaluation-harness do.
- Token limits: 128 new tokens single-line (the longest reference line is 141 characters;
  the newline stops it much earlier) and 256 multi-line (the longest reference middle is 859
  characters, 99% are under 620); raise them with --max-new-tokens-single/-multi.
- --limit N: N tasks per benchmark, evenly spread over the file (so over many problems).
- Baselines (--baseline): "empty" (the middle left out) and "repeat-line" (the prefix's last
  non-blank line again); they ignore the prompt format, so they are scored once ("ANY").
- Exact match (--repo): single lines cut out of the git-tracked source files of a held-out
  repository (`repo_lines.py`), with the server's cursor window around them.

The Code Llama 7B numbers printed beside ours are the paper's (77.0 / 83.3 single-line,
49.7 / 51.2 multi-line, PSM / SPM). The paper does not spell out its truncation rules, so
small protocol differences may remain when comparing a real Code Llama run with them.
"""
