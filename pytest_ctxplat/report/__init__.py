"""Results, statistics, tables and output files."""

from .result import SCHEMA_VERSION, HitRates, RunResult, ServerMetrics, write_json

__all__ = ["SCHEMA_VERSION", "HitRates", "RunResult", "ServerMetrics", "write_json"]
