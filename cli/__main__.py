"""``python -m sage.unified.cli``: the same as the ``sage`` command."""

from __future__ import annotations

import sys

from sage.unified.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
