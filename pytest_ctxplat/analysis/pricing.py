"""Price tables and the cost of a caching policy.

A table gives USD per million tokens for ``input``, ``output``, ``cache_read`` and
``cache_write`` per TTL (seconds). For a TTL cache analysis of a workload, each request
pays: hit block tokens at ``cache_read``, missed block tokens at the write price of the
TTL (they are written to the cache), the tail without a block id at ``input``, and its
output at ``output``. The baseline without caching pays every input token at ``input``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..builtin import DATA
from ..config import FieldError, Source, Validated, build, read_resource, read_yaml, setting
from ..errors import ConfigError

__all__ = ["PriceTable", "cost_of_policy", "load_price_tables", "price_table"]


@dataclass(frozen=True, kw_only=True)
class PriceTable(Validated):
    """USD per million tokens; ``cache_write`` maps a TTL (seconds) to its write price."""

    name: str = setting("", internal=True)
    input: float = setting(ge=0, doc="uncached input tokens")
    output: float = setting(ge=0, doc="output tokens")
    cache_read: float = setting(ge=0, doc="input tokens served from the cache")
    cache_write: dict[float, float] = setting(non_empty=True, doc="TTL seconds -> price of "
                                              "writing a token with that TTL")

    def validate(self) -> None:
        for ttl, price in self.cache_write.items():
            key = f"cache_write.{int(ttl) if ttl.is_integer() else ttl}"  # as written
            if not ttl > 0:
                raise FieldError(key, "a TTL must be > 0 seconds")
            if not (price >= 0 and math.isfinite(price)):
                raise FieldError(key, f"must be a price >= 0, got {price}")

    def write_price(self, ttl_s: float) -> float | None:
        """Write price for a cache with this TTL: the smallest listed TTL >= it."""
        ok = [t for t in self.cache_write if t >= ttl_s]
        return self.cache_write[min(ok)] if ok else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input": self.input, "output": self.output,
                "cache_read": self.cache_read,
                "cache_write": {f"{k:g}": v for k, v in sorted(self.cache_write.items())}}


@dataclass(frozen=True, kw_only=True)
class PriceFile(Validated):
    """A price file: named tables and the default one."""

    tables: dict[str, PriceTable] = setting(non_empty=True)
    default: str | None = None

    def validate(self) -> None:
        if self.default is not None and self.default not in self.tables:
            raise FieldError("default", f"{self.default!r} is not a table here",
                             ", ".join(self.tables))


def _parse(data: Any, src: Source) -> tuple[dict[str, PriceTable], str | None]:
    doc = build(PriceFile, data, src)
    return ({name: dataclasses.replace(t, name=name) for name, t in doc.tables.items()},
            doc.default)


def load_price_tables(path: str | Path | None = None) -> tuple[dict[str, PriceTable], str]:
    """Built-in tables, then those of ``path`` (same names replace built-ins).
    Returns the tables and the default table name."""
    tables, default = _parse(*read_resource(DATA, "pricing.yaml"))
    if path is not None:
        extra, user_default = _parse(*read_yaml(path))
        tables.update(extra)
        default = user_default or (next(iter(extra)) if len(extra) == 1 else default)
    assert default is not None
    return tables, default


def price_table(name: str | None = None, path: str | Path | None = None) -> PriceTable:
    tables, default = load_price_tables(path)
    key = name or default
    if key not in tables:
        raise ConfigError(f"unknown price table {key!r}; valid: {', '.join(tables)}")
    return tables[key]


def cost_of_policy(
    table: PriceTable, *, ttl_s: float, hit_tokens: int, block_tokens: int,
    input_tokens: int, output_tokens: int,
) -> dict[str, float | None]:
    """Cost (USD) of a workload under a TTL cache, and the saving against no caching."""
    baseline = (input_tokens * table.input + output_tokens * table.output) / 1e6
    write = table.write_price(ttl_s)
    if write is None:
        return {"write_price": None, "cost_usd": None, "baseline_usd": baseline,
                "saving_usd": None, "saving_fraction": None}
    miss = block_tokens - hit_tokens
    tail = max(0, input_tokens - block_tokens)
    cost = (hit_tokens * table.cache_read + miss * write + tail * table.input
            + output_tokens * table.output) / 1e6
    return {"write_price": write, "cost_usd": cost, "baseline_usd": baseline,
            "saving_usd": baseline - cost,
            "saving_fraction": (baseline - cost) / baseline if baseline else None}
