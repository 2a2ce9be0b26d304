"""``python -m sage.unified.agent [asyncio|trio]``: run an agent configured from the environment."""

from sage.unified.agent.main import main

raise SystemExit(main())
