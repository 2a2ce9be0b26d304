"""Map each top-level component folder onto the ``sage.unified`` namespace.

``agent/`` installs as ``sage.unified.agent`` and so on. Neither ``sage`` nor
``sage.unified`` has an ``__init__.py``: both are PEP 420 namespaces shared
with the rest of the SAGE ecosystem.
"""

from setuptools import find_packages, setup

ROOT = "sage.unified"
COMPONENTS = ("agent", "coordinator", "gateway", "sdk", "cli")

setup(
    package_dir={f"{ROOT}.{c}": c for c in COMPONENTS},
    packages=[
        name
        for c in COMPONENTS
        for name in (f"{ROOT}.{c}", *(f"{ROOT}.{c}.{sub}" for sub in find_packages(c)))
    ],
)
