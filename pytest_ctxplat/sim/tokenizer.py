"""A deterministic word-level tokenizer for the simulator.

Vocabulary: ids ``0 .. 15`` are special tokens; every id ``i >= 16`` is the word written
as the bijective base-26 numeral of ``i - 15`` in letters ``a..z``: 16 -> ``a``,
41 -> ``z``, 42 -> ``aa``, ... (four letters or fewer for a 32k vocabulary). The mapping
is a bijection between ids ``16 .. vocab_size - 1`` and those words.

* ``encode(text)`` splits on whitespace; a known word maps to its id, any other word to
  ``16 + blake2b(word) mod (vocab_size - 16)`` (stable, never special).
* ``decode(ids)`` is the words joined by single spaces; each token's text piece is
  ``" " + word`` (:meth:`Tokenizer.token_text`), so streamed pieces concatenate to
  ``" " + decode(ids)``. Special ids decode to ``<|name|>``.
* ``encode(decode(ids)) == ids`` for ids >= 16.

Chat template (:meth:`Tokenizer.apply_chat_template`): for each message, one role-marker
token (``system`` 1, ``user`` 2, ``assistant`` 3, ``tool`` 4; ``developer`` counts as
``system``) followed by the tokens of its content; then, as the generation prompt, one
``assistant`` marker. Word-level text never produces a marker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_ctxplat.errors import RequestError, SimulatorError

__all__ = ["NUM_SPECIAL_TOKENS", "ROLE_TOKENS", "ChatTemplateError", "Tokenizer"]

NUM_SPECIAL_TOKENS = 16
ROLE_TOKENS: dict[str, int] = {"system": 1, "user": 2, "assistant": 3, "tool": 4}
_ROLE_ALIASES = {"developer": "system"}
_SPECIAL_NAMES = {0: "pad", 1: "system", 2: "user", 3: "assistant", 4: "tool"}
_A = ord("a")


class ChatTemplateError(RequestError):
    """Messages that the chat template cannot render."""


class Tokenizer:
    """Word-level tokenizer over ``vocab_size`` ids (see the module docstring)."""

    def __init__(self, vocab_size: int = 32000) -> None:
        if vocab_size <= NUM_SPECIAL_TOKENS:
            raise SimulatorError(f"vocab_size must be > {NUM_SPECIAL_TOKENS}")
        self.vocab_size = vocab_size
        self._span = vocab_size - NUM_SPECIAL_TOKENS
        self._words: dict[int, str] = {}

    def word(self, token_id: int) -> str:
        """The text of one token id (without the leading space)."""
        if not 0 <= token_id < self.vocab_size:
            raise RequestError(f"token id {token_id} out of range 0..{self.vocab_size - 1}")
        cached = self._words.get(token_id)
        if cached is not None:
            return cached
        if token_id < NUM_SPECIAL_TOKENS:
            word = f"<|{_SPECIAL_NAMES.get(token_id, f'special_{token_id}')}|>"
        else:
            n = token_id - NUM_SPECIAL_TOKENS + 1
            letters: list[str] = []
            while n > 0:
                n, r = divmod(n - 1, 26)
                letters.append(chr(_A + r))
            word = "".join(reversed(letters))
        self._words[token_id] = word
        return word

    def token_text(self, token_id: int) -> str:
        """The streamed text piece of one token: ``" " + word``."""
        return " " + self.word(token_id)

    def word_id(self, word: str) -> int:
        """The id of one whitespace-free word (known word or stable hash)."""
        if 0 < len(word) <= 6 and word.isascii() and word.isalpha() and word.islower():
            n = 0
            for ch in word:
                n = n * 26 + (ord(ch) - _A + 1)
            token_id = n - 1 + NUM_SPECIAL_TOKENS
            if token_id < self.vocab_size:
                return token_id
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        return NUM_SPECIAL_TOKENS + int.from_bytes(digest, "little") % self._span

    def encode(self, text: str) -> list[int]:
        return [self.word_id(w) for w in text.split()]

    def decode(self, token_ids: Iterable[int]) -> str:
        return " ".join(self.word(int(t)) for t in token_ids)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a chat: role marker + content tokens per message, then an
        assistant marker. Content may be a string, ``None`` or a list of
        ``{"type": "text", "text": ...}`` parts (other part types are rejected)."""
        ids: list[int] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping):
                raise ChatTemplateError(f"messages[{i}] must be an object")
            role = msg.get("role")
            role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
            if role not in ROLE_TOKENS:
                raise ChatTemplateError(
                    f"messages[{i}].role must be one of "
                    f"{', '.join([*ROLE_TOKENS, *_ROLE_ALIASES])}, got {msg.get('role')!r}"
                )
            ids.append(ROLE_TOKENS[role])
            ids.extend(self.encode(_content_text(msg.get("content"), i)))
        if add_generation_prompt:
            ids.append(ROLE_TOKENS["assistant"])
        return ids


def _content_text(content: object, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ChatTemplateError(
                    f"messages[{index}].content parts must be {{'type': 'text', 'text': str}}"
                )
            texts.append(part["text"])
        return " ".join(texts)
    raise ChatTemplateError(f"messages[{index}].content must be a string or a list of parts")
