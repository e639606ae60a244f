"""Root keys in a device: the :class:`~kinko.hsm.port.Hsm` port and its adapters.

- :mod:`kinko.hsm.port` — the protocol, handle and label rules shared by every adapter;
- :mod:`kinko.hsm.pkcs11` — a PKCS#11 token (SoftHSM2 in tests, a network HSM in production);
- :mod:`kinko.hsm.soft` — the embedded soft keystore (NOT HSM-grade; says so);
- :mod:`kinko.hsm.memory` — the in-memory twin for fast unit tests.

Adapters import only what they need, so importing this package does not load python-pkcs11.
"""

from __future__ import annotations

from kinko.hsm.port import Hsm

__all__ = ["Hsm"]
