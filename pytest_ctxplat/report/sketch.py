"""Mergeable latency sketches (DDSketch) for pooled and per-period percentiles.

A :class:`Sketch` holds a distribution of positive values (latencies, speeds) in
logarithmic buckets. Its quantiles have a bounded *relative* error:
``quantile(q)`` is within :data:`RELATIVE_ACCURACY` (1%) of the exact lower order
statistic at rank ``q * (n - 1)`` (numpy's ``percentile(..., method="lower")``),
whatever the distribution. Sketches of several runs or periods merge exactly (the
merged sketch is the sketch of the pooled values), and serialize to a small mapping
(``[bucket index, count]`` pairs) for the result JSON.

Exact percentiles of a run are still computed from its records (``report.stats``); the
sketches serve where values are pooled or sliced: repeated runs, measurement periods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from ddsketch import DDSketch

__all__ = ["RELATIVE_ACCURACY", "Sketch"]

RELATIVE_ACCURACY = 0.01


class Sketch:
    """A DDSketch with :data:`RELATIVE_ACCURACY` relative accuracy."""

    __slots__ = ("_dd",)

    def __init__(self, values: Iterable[float] | npt.NDArray[np.float64] = ()) -> None:
        self._dd = DDSketch(RELATIVE_ACCURACY)
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values),
                         dtype=np.float64)
        if arr.size:
            self._add_many(arr)

    def _add_many(self, arr: npt.NDArray[np.float64]) -> None:
        """``DDSketch.add`` for many values at once: bucket keys with numpy."""
        dd = self._dd
        mapping = dd._mapping
        positive = arr[arr > mapping.min_possible]
        if positive.size:
            keys = np.ceil(np.log2(positive) * mapping._multiplier) + mapping._offset
            uniq, counts = np.unique(keys.astype(np.int64), return_counts=True)
            for key, count in zip(uniq.tolist(), counts.tolist(), strict=True):
                dd._store.add(key, float(count))
            dd._count += float(positive.size)
            dd._sum += float(positive.sum())
            dd._min = min(dd._min, float(positive.min()))
            dd._max = max(dd._max, float(positive.max()))
        for v in arr[arr <= mapping.min_possible].tolist():  # zero or negative: rare
            dd.add(v)

    @property
    def count(self) -> int:
        return int(self._dd.count)

    def add(self, value: float) -> None:
        self._dd.add(float(value))

    def merge(self, other: Sketch) -> Sketch:
        """Add ``other``'s values to this sketch; returns ``self``."""
        self._dd.merge(other._dd)
        return self

    @classmethod
    def merged(cls, sketches: Iterable[Sketch]) -> Sketch:
        out = cls()
        for s in sketches:
            out.merge(s)
        return out

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1); None for an empty sketch."""
        v = self._dd.get_quantile_value(q)
        return None if v is None else float(v)

    def percentile(self, p: float) -> float | None:
        """The value at percentile ``p`` (0..100)."""
        return self.quantile(p / 100.0)

    def to_dict(self) -> dict[str, Any]:
        """A compact form: the non-empty buckets (``[index, count]`` pairs) and summary
        figures."""
        dd = self._dd
        store = dd._store
        bins = [[i + store.offset, int(c)] for i, c in enumerate(store.bins) if c]
        return {"relative_accuracy": RELATIVE_ACCURACY, "count": self.count,
                "zero_count": int(dd._zero_count), "sum": float(dd.sum),
                "min": float(dd._min) if self.count else None,
                "max": float(dd._max) if self.count else None, "bins": bins}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sketch:
        """The sketch :meth:`to_dict` wrote (same relative accuracy only)."""
        if float(data.get("relative_accuracy", RELATIVE_ACCURACY)) != RELATIVE_ACCURACY:
            raise ValueError(f"sketch relative_accuracy {data.get('relative_accuracy')} "
                             f"is not {RELATIVE_ACCURACY}")
        out = cls()
        dd = out._dd
        for key, count in data.get("bins") or ():
            dd._store.add(int(key), float(count))
        dd._zero_count = float(data.get("zero_count", 0))
        dd._count = float(data.get("count", 0))
        dd._sum = float(data.get("sum", 0.0))
        if data.get("min") is not None:
            dd._min = float(data["min"])
            dd._max = float(data["max"])
        return out
