"""Studio: the web console for the fleet, served by the gateway under ``/studio/``.

Plain HTML, CSS and JavaScript modules shipped in this package (``static/``): no build
step, no CDN, nothing fetched from the internet, so it works on an air-gapped head node.
The console talks only to the gateway's own APIs (management, ``/metrics``,
``/v1/models``, ``/v1/chat/completions``, ``/sessions``), with the operator's tokens.
"""

from __future__ import annotations

from sage.unified.gateway.studio._router import STATIC_FILES, create_studio_router

__all__ = ["STATIC_FILES", "create_studio_router"]
