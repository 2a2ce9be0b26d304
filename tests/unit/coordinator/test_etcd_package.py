"""The etcd package's public names, and its pure modules staying free of I/O libraries."""

from __future__ import annotations

import subprocess
import sys

import sage.unified.coordinator._etcd as etcd_package

PURE = ("_endpoints", "_errors", "_types", "_codec")


def test_public_names() -> None:
    assert sorted(etcd_package.__all__) == sorted(
        name for name in dir(etcd_package) if not name.startswith("_") and name != "annotations"
    )
    for name in ("EtcdClient", "Election", "Watch", "Compare", "EtcdError", "parse_etcd_url"):
        assert name in etcd_package.__all__


def test_pure_modules_import_neither_httpx_nor_anyio() -> None:
    # Stub the two parent packages (their __init__ imports the I/O parts), then import
    # the pure modules alone in a fresh interpreter.
    code = f"""
import importlib.util, pathlib, sys, types
root = pathlib.Path(next(iter(importlib.util.find_spec("sage.unified").submodule_search_locations)))
for name, path in [("sage.unified.coordinator", root / "coordinator"),
                   ("sage.unified.coordinator._etcd", root / "coordinator" / "_etcd")]:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
for name in {PURE!r}:
    importlib.import_module("sage.unified.coordinator._etcd." + name)
print(sorted({{"httpx", "anyio"}} & set(sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
