"""The fill-in-the-middle transform of one document, as the Code Llama paper trains it.

With probability `fim_rate` (0.9) a document is cut at two uniform character offsets into
prefix / middle / suffix and laid out as PSM or SPM (half each); otherwise it stays a plain
left-to-right document. The layouts are the engine's prompt builders followed by the
middle and <EOT>, so the model is trained on exactly the prompt it is served:

    PSM: psm_tokens(prefix, suffix)  + encode_infilling(middle) + [EOT]
         = [BOS, PRE] + enc(prefix) + [SUF] + enc_inf(suffix) + [MID] + enc_inf(middle) + [EOT]
    SPM: spm_header_tokens(suffix)   + encode(prefix + middle)   + [EOT]
         = [BOS, PRE, SUF] + enc_inf(suffix) + [MID] + enc(prefix + middle) + [EOT]

SPM encodes prefix + middle as one string, so no token straddles the cut (that is what a
served SPM prompt continues from). Every random choice comes from an RNG seeded by
(seed, epoch, document index): any worker, in any order, makes the same example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from engine.prompts import psm_tokens, spm_header_tokens
from engine.tokenizer import Tokenizer

FimKind = Literal["plain", "psm", "spm"]


@dataclass(frozen=True)
class FimDocument:
    """One document after the FIM draw (the text parts and the training tokens)."""

    kind: FimKind
    """"plain" (left to right), "psm" or "spm"."""
    prefix: str
    middle: str
    suffix: str
    """For "plain" the whole text is in prefix; middle and suffix are empty."""
    tokens: list[int]
    """Training tokens: the layout above, or [BOS] + encode(text) + [EOS] for plain."""

    @property
    def text(self) -> str:
        return self.prefix + self.middle + self.suffix


def document_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG of one document: a string seed is hashed (SHA-512) the same in every process."""
    return random.Random(f"fim/{seed}/{epoch}/{index}")


def draw_fim(text: str, rng: random.Random, fim_rate: float, spm_rate: float) -> tuple[FimKind, str, str, str]:
    """(kind, prefix, middle, suffix) for one document.

    Always draws the same three numbers in the same order, so a document's choice does not
    depend on the rates of anything drawn before it.
    """
    use_fim = rng.random() < fim_rate
    # Two uniform character offsets in [0, len]: empty prefixes, middles and suffixes happen,
    # as they do at a cursor.
    cut_a, cut_b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    use_spm = rng.random() < spm_rate
    if not use_fim:
        return "plain", text, "", ""
    return ("spm" if use_spm else "psm"), text[:cut_a], text[cut_a:cut_b], text[cut_b:]


def plain_tokens(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, bos=True, eos=True)


def fim_tokens(tok: Tokenizer, kind: FimKind, prefix: str, middle: str, suffix: str) -> list[int]:
    """The training tokens of one transformed document (layouts from engine.prompts)."""
    if kind == "psm":
        return psm_tokens(tok, prefix, suffix) + tok.encode_infilling(middle) + [tok.eot_id]
    if kind == "spm":
        return spm_header_tokens(tok, suffix) + tok.encode(prefix + middle) + [tok.eot_id]
    raise ValueError(f"unknown FIM layout {kind!r}: expected 'psm' or 'spm'")


def transform_document(
    tok: Tokenizer, text: str, seed: int, epoch: int, index: int, fim_rate: float = 0.9, spm_rate: float = 0.5
) -> FimDocument:
    """The FIM example for document `index` of `epoch` (reproducible anywhere)."""
    kind, prefix, middle, suffix = draw_fim(text, document_rng(seed, epoch, index), fim_rate, spm_rate)
    if kind == "plain":
        return FimDocument("plain", text, "", "", plain_tokens(tok, text))
    return FimDocument(kind, prefix, middle, suffix, fim_tokens(tok, kind, prefix, middle, suffix))
