"""Deterministic prompt synthesis: block id -> token ids.

Every request's input is a list of full blocks (ids) plus a partial tail block. The
tokens of a block depend only on ``(seed, block id, position in block)``, so the same id
always renders to the same tokens: two prompts that share leading block ids share exactly
that token prefix, and the server sees the prefix structure the plan designed.

Synthesis is vectorised (a few in-place numpy passes over the whole prompt), so a
100k-token prompt costs about a quarter of a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["TokenSpace"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_H1 = np.uint32(0x7FEB352D)
_H2 = np.uint32(0x846CA68B)
_S15 = np.uint32(15)
_S16 = np.uint32(16)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    out: npt.NDArray[np.uint64] = x ^ (x >> np.uint64(31))
    return out


class TokenSpace:
    """Maps block ids to token ids in ``[token_min, token_max)``.

    ``token_min`` skips the low ids that tokenizers reserve for special tokens; the
    default range fits any model with a vocabulary of at least 4,096 tokens (the tiny
    local models included).

    A block's 64-bit key is splitmix64 of its id (one mix per block); its tokens are a
    32-bit integer hash of ``key ^ position``, scaled into the range by multiply-shift
    (no division). All in place on one uint32 array: a 100k-token prompt costs about
    0.25 ms.
    """

    __slots__ = ("_pos", "_seed_key", "block_size", "seed", "span", "token_min")

    def __init__(
        self, block_size: int, *, seed: int = 0, token_min: int = 100, token_max: int = 4096
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        if not 0 <= token_min < token_max:
            raise ValueError(f"need 0 <= token_min < token_max, got {token_min}, {token_max}")
        self.block_size = block_size
        self.seed = seed
        self.token_min = token_min
        self.span = token_max - token_min
        self._seed_key = np.uint64(seed * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF)
        with np.errstate(over="ignore"):
            pos = (np.arange(block_size, dtype=np.uint64) + np.uint64(1)) * _GOLD
        self._pos = (pos >> np.uint64(32)).astype(np.uint32)

    def tokens(
        self, block_ids: Sequence[int] | npt.NDArray[np.int64], tail_id: int = 0, tail_len: int = 0
    ) -> npt.NDArray[np.int64]:
        """Token ids of ``block_ids`` (full blocks) followed by the first ``tail_len``
        tokens of block ``tail_id``."""
        bs = self.block_size
        if not 0 <= tail_len < bs:
            raise ValueError(f"tail_len must be in [0, {bs}), got {tail_len}")
        ids = np.asarray(block_ids, dtype=np.int64).astype(np.uint64)
        if tail_len:
            ids = np.append(ids, np.uint64(tail_id))
        with np.errstate(over="ignore"):
            keys = (_mix(ids ^ self._seed_key) >> np.uint64(32)).astype(np.uint32)
            g = (keys[:, None] ^ self._pos[None, :]).ravel()
            if tail_len:
                g = g[: len(ids) * bs - (bs - tail_len)]
            # lowbias32 integer hash, in place
            g ^= g >> _S16
            g *= _H1
            g ^= g >> _S15
            g *= _H2
            g ^= g >> _S16
            if self.span <= 0x10000:
                g >>= _S16
                g *= np.uint32(self.span)
                g >>= _S16
                out: npt.NDArray[np.int64] = g.astype(np.int64)
            else:
                out = ((g.astype(np.uint64) * np.uint64(self.span)) >> np.uint64(32)).astype(
                    np.int64)
        out += self.token_min
        return out
