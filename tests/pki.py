"""Certificates made at run time (trustme), for the TLS tests: the
``pki`` fixture in conftest.py gives each test its own CA and folder."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from eco_trio.transport import tls


@dataclass
class Pki:
    ca: trustme.CA
    folder: Path

    def files(
        self,
        *names: str,
        ca: trustme.CA | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        common_name: str | None = None,
    ) -> tuple[str, str]:
        """A certificate for ``names`` (and its key), as PEM files."""
        issued = (ca or self.ca).issue_cert(
            *names, not_before=not_before, not_after=not_after, common_name=common_name
        )
        stem = self.folder / f"{names[0]}-{id(issued)}"
        issued.cert_chain_pems[0].write_to_path(f"{stem}.crt")
        issued.private_key_pem.write_to_path(f"{stem}.key")
        return f"{stem}.crt", f"{stem}.key"

    @property
    def ca_file(self) -> str:
        path = self.folder / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def client(
        self,
        *names: str,
        ca: trustme.CA | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> ssl.SSLContext:
        cert, key = (
            self.files(*names, ca=ca, not_before=not_before, not_after=not_after) if names else (None, None)
        )
        return tls.client_context(self.ca_file, cert, key)
