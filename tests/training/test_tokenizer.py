"""`tokenizer`: a Llama-style SentencePiece BPE model the engine can infill with."""

from __future__ import annotations

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from engine.prompts import build_infill_prompt
from engine.tokenizer import FIM_PIECES, SMILEY, Tokenizer
from tests.training.helpers import make_corpus
from training.cli import main


def test_trained_tokenizer_has_the_fim_pieces_and_llama_options(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "tok" / "tokenizer.model"
    assert main(["tokenizer", "--data", str(corpus), "--vocab-size", "600", "--out", str(out)]) == 0
    assert "600 pieces" in capsys.readouterr().out

    tok = Tokenizer(out)
    assert tok.can_infill and tok.vocab_size == 600
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.sp.pad_id()) == (0, 1, 2, -1)
    for piece in (*FIM_PIECES, SMILEY):
        assert len(tok.sp.encode(piece)) <= 2 and tok.sp.piece_to_id(piece) != tok.sp.unk_id()

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(out.read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert spec.byte_fallback and spec.split_digits and spec.allow_whitespace_only_pieces
    assert norm.name == "identity" and not norm.remove_extra_whitespaces

    # Byte fallback: any text round-trips, digits are single tokens, indentation stays exact.
    text = "def f(x):\n        return x * 12345  # naïve ☃ 日本\n"
    assert tok.decode(tok.encode(text)) == text
    assert all(len(tok.sp.id_to_piece(t).strip("▁")) <= 1 for t in tok.encode("12345"))
    assert tok.decode_infilling(tok.encode_infilling("    indented")) == "    indented"
    prompt = build_infill_prompt(tok, "def f(x):\n    return ", "\n", "psm").tokens
    assert prompt[:2] == [tok.bos_id, tok.prefix_id] and prompt[-1] == tok.middle_id


def test_bad_vocabulary_size_is_refused(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    assert main(["tokenizer", "--data", str(corpus), "--vocab-size", "100", "--out", str(tmp_path / "t.model")]) == 2
    assert "--vocab-size 100 is too small" in capsys.readouterr().err
    assert not (tmp_path / "t.model").exists()
    assert spm  # the module is importable where tokenizers are trained
