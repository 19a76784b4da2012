"""Token healing's constraint (torch-free: the remote backends use it too).

SPM prompts are backed up by the prefix's last token (engine.prompts); the first generated
tokens must then spell exactly the characters cut off. In process the logits are masked to
`allowed()`; a remote server gets the same set as a logit bias.
"""

from __future__ import annotations

from engine.tokenizer import Tokenizer


class HealingConstraint:
    """Forces the first generated tokens to spell `text`.

    A token is allowed while its bytes either continue the remaining text or complete it
    and run past it; byte-fallback tokens make every text reachable.
    """

    def __init__(self, tok: Tokenizer, text: str) -> None:
        self.tok = tok
        self.remaining = text.encode("utf-8")
        special = (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id, tok.sp.unk_id())
        self.banned = {t for t in special if t is not None}

    @property
    def active(self) -> bool:
        return bool(self.remaining)

    def allowed(self) -> list[int]:
        if not self.remaining:
            return []
        table = self.tok.token_bytes
        return [
            t
            for t in self.tok.tokens_by_first_byte.get(self.remaining[0], [])
            if t not in self.banned and (table[t].startswith(self.remaining) or self.remaining.startswith(table[t]))
        ]

    def advance(self, token: int) -> None:
        data = self.tok.token_bytes[token]
        self.remaining = self.remaining[len(data) :] if self.remaining.startswith(data) else b""

    def give_up(self) -> None:
        self.remaining = b""
