"""``python -m sage.unified.agent.simulator``."""

from __future__ import annotations

from sage.unified.agent.simulator._runner import main

if __name__ == "__main__":
    raise SystemExit(main())
