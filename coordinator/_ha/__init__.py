"""The highly available control plane: the coordinator's state in an etcd cluster shared
by every gateway (``store = "etcd://h1:2379,h2:2379,h3:2379"``).

Design and rules: docs/architecture.md ("Highly available control plane"). The parts:
:mod:`._records` (key layout and values, pure), :mod:`._view` (the mirror's state, pure),
:mod:`._mirror` (read + watch, store health), :mod:`._intake` (reports),
:mod:`._leases` (batched lease renewals), :mod:`._commands` (register/start/stop),
:mod:`._leader` (election), :mod:`._starts` (the leader's start executor),
:mod:`._housekeeping` (retention, audit trimming, compaction), :mod:`._audit`.
"""

from __future__ import annotations

from sage.unified.coordinator._ha._backend import EtcdBackend, etcd_client_for
from sage.unified.coordinator._ha._records import KeySpace

__all__ = ["EtcdBackend", "KeySpace", "etcd_client_for"]
