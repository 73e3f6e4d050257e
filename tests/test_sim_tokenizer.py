"""The simulator's word-level tokenizer and chat template."""

from __future__ import annotations

import pytest

from pytest_ctxplat.sim.tokenizer import NUM_SPECIAL_TOKENS, ROLE_TOKENS, Tokenizer


def test_vocabulary_is_a_bijection_over_non_special_ids() -> None:
    tok = Tokenizer(32000)
    words = [tok.word(i) for i in range(NUM_SPECIAL_TOKENS, 32000)]
    assert len(set(words)) == len(words)
    assert all(w.isalpha() and w.islower() and len(w) <= 4 for w in words)
    ids = list(range(NUM_SPECIAL_TOKENS, 32000))
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.word(16) == "a" and tok.word(41) == "z" and tok.word(42) == "aa"


def test_unknown_words_hash_stably_and_never_to_specials() -> None:
    tok = Tokenizer(1000)
    text = "Hello, World! zzzzzz émoji a"
    ids = tok.encode(text)
    assert ids == Tokenizer(1000).encode(text)
    assert len(ids) == 5 and all(NUM_SPECIAL_TOKENS <= i < 1000 for i in ids)
    assert ids[-1] == 16
    assert tok.encode("  a\n\tb  ") == [16, 17]
    with pytest.raises(ValueError):
        tok.word(1000)


def test_streamed_pieces_concatenate_to_the_text() -> None:
    tok = Tokenizer()
    ids = [100, 2000, 31999]
    assert "".join(tok.token_text(i) for i in ids) == " " + tok.decode(ids)


def test_chat_template() -> None:
    tok = Tokenizer()
    msgs = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": "ok"},
    ]
    ids = tok.apply_chat_template(msgs)
    system, user, assistant, tool = (ROLE_TOKENS[r] for r in ("system", "user", "assistant",
                                                              "tool"))  # fmt: skip
    assert ids == [system, *tok.encode("be brief"), user, *tok.encode("hi"), assistant, tool,
                   *tok.encode("ok"), assistant]  # fmt: skip
    assert tok.apply_chat_template(msgs[:1], add_generation_prompt=False)[-1] != assistant
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"role": "bot", "content": "x"}])
