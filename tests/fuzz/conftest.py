"""Fixtures for the fuzz tests: the real-process fixtures of ``tests/integration``
(simulated engines, gateways), loaded from there rather than copied."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sage_tests_integration_conftest_fuzz",
    Path(__file__).resolve().parent.parent / "integration" / "conftest.py",
)
assert _spec is not None
assert _spec.loader is not None
_integration = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules while the class is created.
sys.modules[_spec.name] = _integration
_spec.loader.exec_module(_integration)

start_simulator = _integration.start_simulator
start_gateway = _integration.start_gateway
models_ready = _integration.models_ready
