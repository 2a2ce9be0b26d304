"""The store flags ``sage gateway start|run`` and ``sage coordinator run`` share.

``--store etcd://h1:2379,h2:2379,h3:2379`` puts the control plane's state in etcd (several
gateways); TLS files and the etcd user are flags too, the password never is (it would be
in the shell history and in every process listing): ``SAGE_GATEWAY_ETCD_PASSWORD`` /
``SAGE_COORDINATOR_ETCD_PASSWORD``, or a file (``--etcd-password-file``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclopts import Parameter

from sage.unified.cli.errors import UsageError

__all__ = ["StoreOptions"]


@Parameter(name="*")
@dataclass(kw_only=True)
class StoreOptions:
    """Where the control plane keeps its state."""

    store: str | None = None
    """sqlite (default: one head node) or an etcd cluster for several gateways:
    etcd://h1:2379,h2:2379,h3:2379 (etcds:// for TLS). No password in it: set
    SAGE_GATEWAY_ETCD_PASSWORD or SAGE_COORDINATOR_ETCD_PASSWORD, or --etcd-password-file."""
    etcd_ca: Path | None = None
    """CA bundle that signed the etcd members' certificates."""
    etcd_cert: Path | None = None
    """Client certificate for etcd (with --etcd-key)."""
    etcd_key: Path | None = None
    """Key of the client certificate."""
    etcd_user: str | None = None
    """etcd user (etcd authentication)."""
    etcd_password_file: Path | None = None
    """File whose first line is the etcd password."""

    def settings_kwargs(self) -> dict[str, Any]:
        """The settings the flags give (only those given).

        Raises:
            UsageError: a password in the store URL.
        """
        if self.store is not None:
            _, sep, rest = self.store.partition("://")
            userinfo = rest.rpartition("@")[0] if sep else ""
            if ":" in userinfo:
                raise UsageError(
                    "--store must not carry a password (it would show in process listings); "
                    "set SAGE_GATEWAY_ETCD_PASSWORD / SAGE_COORDINATOR_ETCD_PASSWORD or use "
                    "--etcd-password-file"
                )
        given = {
            "store": self.store,
            "etcd_ca_file": self.etcd_ca,
            "etcd_cert_file": self.etcd_cert,
            "etcd_key_file": self.etcd_key,
            "etcd_username": self.etcd_user,
            "etcd_password_file": self.etcd_password_file,
        }
        return {key: value for key, value in given.items() if value is not None}

    def flags(self) -> list[str]:
        flags: list[str] = []
        for name, value in (
            ("--store", self.store),
            ("--etcd-ca", self.etcd_ca),
            ("--etcd-cert", self.etcd_cert),
            ("--etcd-key", self.etcd_key),
            ("--etcd-user", self.etcd_user),
            ("--etcd-password-file", self.etcd_password_file),
        ):
            if value is not None:
                flags += [name, str(value)]
        return flags
