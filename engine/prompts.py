"""Infilling prompts: PSM and SPM token layouts, and token healing for SPM.

The layouts are exactly those of Meta's `infilling_prompt_tokens` (llama/generation.py):

    PSM: [BOS, PRE] + encode(prefix) + [SUF] + encode_infilling(suffix) + [MID]
    SPM: [BOS, PRE, SUF] + encode_infilling(suffix) + [MID] + encode(prefix)

Training (`training/fim.py`) builds its examples from the same functions, so the model
is trained on precisely the layout it is prompted with.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.options import INFILL_FORMATS, InfillFormat
from engine.tokenizer import Tokenizer

__all__ = ["INFILL_FORMATS", "InfillFormat", "InfillPrompt", "build_infill_prompt"]


def psm_tokens(tok: Tokenizer, prefix: str, suffix: str) -> list[int]:
    tok.require_infilling()
    return (
        [tok.bos_id, tok.prefix_id]
        + tok.encode(prefix)
        + [tok.suffix_id]
        + tok.encode_infilling(suffix)
        + [tok.middle_id]
    )


def spm_header_tokens(tok: Tokenizer, suffix: str) -> list[int]:
    """Everything an SPM prompt holds before the prefix: it does not change while typing."""
    tok.require_infilling()
    return [tok.bos_id, tok.prefix_id, tok.suffix_id] + tok.encode_infilling(suffix) + [tok.middle_id]


def infilling_prompt_tokens(tok: Tokenizer, prefix: str, suffix: str, suffix_first: bool = False) -> list[int]:
    """The reference prompt: PSM, or SPM when suffix_first."""
    if suffix_first:
        return spm_header_tokens(tok, suffix) + tok.encode(prefix)
    return psm_tokens(tok, prefix, suffix)


@dataclass(frozen=True)
class InfillPrompt:
    tokens: list[int]
    """The prompt token ids."""
    healing: str = ""
    """Text cut from the end of the prefix that generation must reproduce first (and
    that is then removed from the completion)."""


def build_infill_prompt(
    tok: Tokenizer, prefix: str, suffix: str, fmt: InfillFormat = "spm", token_healing: bool = True
) -> InfillPrompt:
    """The prompt for one cursor position, from its text."""
    return infill_prompt(tok, prefix, tok.encode(prefix), tok.encode_infilling(suffix), fmt, token_healing)


def infill_prompt(
    tok: Tokenizer,
    prefix: str,
    prefix_ids: list[int],
    suffix_ids: list[int],
    fmt: InfillFormat = "spm",
    token_healing: bool = True,
) -> InfillPrompt:
    """The prompt from the halves already tokenized: prefix_ids = encode(prefix), suffix_ids =
    encode_infilling(suffix) (engine.context builds them a part at a time).

    SPM ends with the prefix, so a prefix that stops inside a token ("enu" of "enumerate")
    would leave the model continuing from an unusual token (paper, Appendix E). Token
    healing backs the prompt up by the prefix's last token and lets generation re-create
    those characters with whatever tokenization the model prefers.
    """
    tok.require_infilling()
    if fmt == "psm":
        return InfillPrompt([tok.bos_id, tok.prefix_id, *prefix_ids, tok.suffix_id, *suffix_ids, tok.middle_id])
    if fmt != "spm":
        raise ValueError(f"unknown infilling format {fmt!r}: expected one of {INFILL_FORMATS}")
    header = [tok.bos_id, tok.prefix_id, tok.suffix_id, *suffix_ids, tok.middle_id]
    # Keep at least one prefix token: the first carries SentencePiece's leading space,
    # which the completion's own text does not start with.
    if token_healing and len(prefix_ids) >= 2:
        kept = prefix_ids[:-1]
        kept_text = tok.decode(kept)
        if prefix.startswith(kept_text) and len(kept_text) < len(prefix):
            return InfillPrompt(header + kept, healing=prefix[len(kept_text) :])
    return InfillPrompt(header + prefix_ids)
