"""``ctxplat make-tiny-model``: the Llama config, the locally trained tokenizer, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tokenizers", reason="make-tiny-model needs the tokenizers package")

from tokenizers import Tokenizer

from pytest_ctxplat.cli import main as cli_main
from pytest_ctxplat.tinymodel import CHAT_TEMPLATE, SPECIAL_TOKENS, make_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    assert cli_main(["make-tiny-model", str(out)]) == 0
    return out


def test_config_is_the_reference_llama_shape(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"],
            cfg["max_position_embeddings"], cfg["head_dim"]) == \
        (256, 2, 4, 2, 512, 4096, 8192, 64)
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_covers_every_driver_token_id(model_dir: Path) -> None:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == 4096
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(special) == i  # specials sit below the driver's range
    # the driver sends ids in [100, 4096): every one is a real token
    assert all(tok.id_to_token(i) is not None for i in range(100, 4096))
    text = "def foo(): return 42  # hello"
    ids = tok.encode(text).ids
    assert ids[0] == 0  # <|begin_of_text|>
    assert tok.decode(ids) == text  # byte-level: round trip


def test_idempotent_and_reproducible(model_dir: Path, tmp_path: Path) -> None:
    before = (model_dir / "tokenizer.json").stat().st_mtime_ns
    make_tiny_model(model_dir)
    assert (model_dir / "tokenizer.json").stat().st_mtime_ns == before
    other = make_tiny_model(tmp_path / "again")
    assert (other / "tokenizer.json").read_text() == (model_dir / "tokenizer.json").read_text()


def test_bad_shape_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["make-tiny-model", str(tmp_path / "m"), "--hidden-size", "200"]) == 2
    assert "head_dim 50" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
