"""``python -m pytest_ctxplat.sim``: run the simulator server."""

from __future__ import annotations

import sys

from pytest_ctxplat.sim.server import main

if __name__ == "__main__":
    sys.exit(main())
