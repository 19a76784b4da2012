"""A checkpoint whose greedy output is known: for testing the server, not the model.

Random tiny models write garbage that post-processing may rightly throw away, so tests
that need a real completion use this one. Attention and MLP outputs are zero, so the
residual stream is just the current token's embedding and the model is a bigram table:
every token not in the script is followed by the script's first token, script token i
by token i+1, and the last by <EOT> (or, with loop=True, the first again: a model that
never stops). The server still runs the real engine on it: prompt, KV cache, healing,
sampling, stopping.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.checkpoints import save_checkpoint
from engine.model import Transformer
from engine.tokenizer import Tokenizer
from tests.fixtures import tiny_args


def scripted_model(tokenizer: Tokenizer, script: str, loop: bool = False) -> Transformer:
    chain = tokenizer.encode_infilling(script)
    if len(set(chain)) != len(chain):
        raise ValueError(f"{script!r}: its tokens must be distinct for a bigram script, got {chain}")
    args = tiny_args()
    if len(chain) + 1 > args.dim:
        raise ValueError(f"{script!r}: {len(chain)} tokens need a model wider than {args.dim}")
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight  # (vocab, dim)
        # Dimension 0 marks "any other token"; dimension i + 1 marks script token i.
        embed[:, 0] = 1.0
        head[chain[0], 0] = 1.0
        for i, token in enumerate(chain):
            embed[token] = 0.0
            embed[token, i + 1] = 1.0
            successor = chain[i + 1] if i + 1 < len(chain) else (chain[0] if loop else tokenizer.eot_id)
            head[successor, i + 1] = 1.0
    return model.eval()


def write_scripted_checkpoint(out_dir: Path, tokenizer_path: Path, script: str, loop: bool = False) -> Path:
    model = scripted_model(Tokenizer(tokenizer_path), script, loop)
    return save_checkpoint(out_dir, model, tokenizer_path)
