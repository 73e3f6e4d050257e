"""Price tables and the cost of a caching policy.

A table gives USD per million tokens for ``input``, ``output``, ``cache_read`` and
``cache_write`` per TTL (seconds). For a TTL cache analysis of a workload, each request
pays: hit block tokens at ``cache_read``, missed block tokens at the write price of the
TTL (they are written to the cache), the tail without a block id at ``input``, and its
output at ``output``. The baseline without caching pays every input token at ``input``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["PriceTable", "cost_of_policy", "load_price_tables", "price_table"]


@dataclass(frozen=True)
class PriceTable:
    name: str
    input: float
    output: float
    cache_read: float
    cache_write: dict[float, float]

    def write_price(self, ttl_s: float) -> float | None:
        """Write price for a cache with this TTL: the smallest listed TTL >= it."""
        ok = [t for t in self.cache_write if t >= ttl_s]
        return self.cache_write[min(ok)] if ok else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input": self.input, "output": self.output,
                "cache_read": self.cache_read,
                "cache_write": {f"{k:g}": v for k, v in sorted(self.cache_write.items())}}


def _price(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
        raise ConfigError(f"{where} must be a price >= 0 (USD per million tokens), got {v!r}")
    return float(v)


def _parse(doc: Any, source: str) -> tuple[dict[str, PriceTable], str | None]:
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict):
        raise ConfigError(f"{source}: a price file is a mapping with a 'tables' mapping")
    unknown = set(doc) - {"tables", "default"}
    if unknown:
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r}; valid: tables, default")
    out: dict[str, PriceTable] = {}
    for name, t in doc["tables"].items():
        w = f"{source}: tables.{name}"
        if not isinstance(t, dict):
            raise ConfigError(f"{w} must be a mapping")
        valid = {"input", "output", "cache_read", "cache_write"}
        extra = set(t) - valid
        missing = valid - set(t)
        if extra or missing:
            bad = sorted(extra)[0] if extra else sorted(missing)[0]
            what = "unknown key" if extra else "missing key"
            raise ConfigError(f"{w}: {what} {bad!r}; a table has {', '.join(sorted(valid))}")
        cw = t["cache_write"]
        if not isinstance(cw, dict) or not cw:
            raise ConfigError(f"{w}.cache_write must map TTL seconds to a price, e.g. "
                              "{300: 3.75, 3600: 6.0}")
        writes: dict[float, float] = {}
        for k, v in cw.items():
            try:
                ttl = float(k)
            except (TypeError, ValueError):
                raise ConfigError(f"{w}.cache_write: TTL {k!r} must be seconds") from None
            if ttl <= 0:
                raise ConfigError(f"{w}.cache_write: TTL {k!r} must be > 0 seconds")
            writes[ttl] = _price(v, f"{w}.cache_write.{k}")
        out[str(name)] = PriceTable(str(name), _price(t["input"], f"{w}.input"),
                                    _price(t["output"], f"{w}.output"),
                                    _price(t["cache_read"], f"{w}.cache_read"), writes)
    default = doc.get("default")
    if default is not None and default not in out:
        raise ConfigError(f"{source}: default {default!r} is not one of {', '.join(out)}")
    return out, default


def load_price_tables(path: str | Path | None = None) -> tuple[dict[str, PriceTable], str]:
    """Built-in tables, then those of ``path`` (same names replace built-ins).
    Returns the tables and the default table name."""
    text = resources.files(__package__).joinpath("pricing/providers.yaml").read_text()
    tables, default = _parse(yaml.safe_load(text), "built-in pricing/providers.yaml")
    if path is not None:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the price file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from None
        extra, user_default = _parse(doc, str(p))
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
