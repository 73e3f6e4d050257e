"""``python -m pytest_ctxplat.cli``: the ``ctxplat`` command."""

from __future__ import annotations

import sys

from pytest_ctxplat.cli import main

if __name__ == "__main__":
    sys.exit(main())
