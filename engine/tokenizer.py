"""Code Llama's SentencePiece tokenizer with the reference infilling semantics.

Follows Meta's `llama/tokenizer.py`: the four infilling pieces are looked up by name,
never hard-coded, and `encode_infilling` / `decode_infilling` drop SentencePiece's
implicit leading space by prepending "☺" and removing what it produced.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import sentencepiece as spm

PREFIX_PIECE = "▁<PRE>"
SUFFIX_PIECE = "▁<SUF>"
MIDDLE_PIECE = "▁<MID>"
EOT_PIECE = "▁<EOT>"
FIM_PIECES = (PREFIX_PIECE, SUFFIX_PIECE, MIDDLE_PIECE, EOT_PIECE)
# The reference strips the implicit leading space by encoding "☺" + text; tokenizers we
# train add it as a user-defined symbol so it is always a single piece.
SMILEY = "☺"
# Editors speak UTF-16, so a document can hold half of a surrogate pair (LSP strings are
# JSON, and "\ud800" is valid JSON). UTF-8 cannot encode one and SentencePiece raises:
# encode them as U+FFFD instead, one character for one, so offsets stay put.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """text with every lone surrogate replaced by U+FFFD (a no-op, and fast, for normal text)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text)


class TokenizerError(ValueError):
    """The tokenizer file is missing, unreadable, or cannot do what was asked."""


class Tokenizer:
    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: tokenizer file not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{self.path}: not a SentencePiece model ({e})") from e
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.prefix_id = self._piece_id(PREFIX_PIECE)
        self.suffix_id = self._piece_id(SUFFIX_PIECE)
        self.middle_id = self._piece_id(MIDDLE_PIECE)
        self.eot_id = self._piece_id(EOT_PIECE)
        self.smiley_id = self._piece_id(SMILEY)
        # How many tokens "☺" alone encodes to (2 for Code Llama: "▁", "☺").
        self._smiley_len = len(self.sp.encode(SMILEY))

    def _piece_id(self, piece: str) -> int | None:
        token = self.sp.piece_to_id(piece)
        return None if token == self.sp.unk_id() else token

    @property
    def can_infill(self) -> bool:
        return None not in (self.prefix_id, self.suffix_id, self.middle_id, self.eot_id, self.smiley_id)

    def require_infilling(self) -> None:
        if self.can_infill:
            return
        missing = [p for p in (*FIM_PIECES, SMILEY) if self._piece_id(p) is None]
        raise TokenizerError(
            f"{self.path}: this model cannot infill: its tokenizer has no {', '.join(missing)} "
            "piece(s). Only the Code Llama 7B and 13B base and Instruct models were trained to "
            "fill in the middle (not Code Llama - Python, 34B or 70B)."
        )

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """SentencePiece encoding, with SentencePiece's implicit leading space."""
        tokens = self.sp.encode(encodable(text))
        return ([self.bos_id] if bos else []) + tokens + ([self.eos_id] if eos else [])

    def decode(self, tokens: list[int]) -> str:
        return self.sp.decode(list(tokens))

    def encode_infilling(self, text: str) -> list[int]:
        """Encode text with no implicit leading space (suffixes and middles)."""
        self.require_infilling()
        return self.sp.encode(SMILEY + encodable(text))[self._smiley_len :]

    def decode_infilling(self, tokens: list[int]) -> str:
        """Decode tokens without dropping a leading space (the generated middle)."""
        self.require_infilling()
        return self.sp.decode([self.smiley_id, *tokens])[1:]

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token stands for inside a text; b"" for control/unknown tokens."""
        table = []
        for token in range(self.vocab_size):
            if self.sp.is_byte(token):
                table.append(bytes([int(self.sp.id_to_piece(token)[3:5], 16)]))
            elif self.sp.is_control(token):
                table.append(b"")
            elif self.sp.is_unknown(token):
                table.append(self.decode_infilling([token]).encode("utf-8"))  # " ⁇ ", as SentencePiece shows it
            else:
                table.append(self.sp.id_to_piece(token).replace("▁", " ").encode("utf-8"))
        return table

    def byte_token(self, value: int) -> int | None:
        """The byte-fallback token <0xNN> for one byte, if the vocabulary has it."""
        return self._byte_tokens.get(value)

    @cached_property
    def _byte_tokens(self) -> dict[int, int]:
        return {data[0]: t for t, data in enumerate(self.token_bytes) if self.sp.is_byte(t)}

    @cached_property
    def tokens_by_first_byte(self) -> dict[int, list[int]]:
        """Token ids grouped by their first byte, for fast constrained decoding."""
        index: dict[int, list[int]] = {}
        for token, data in enumerate(self.token_bytes):
            if data:
                index.setdefault(data[0], []).append(token)
        return index
