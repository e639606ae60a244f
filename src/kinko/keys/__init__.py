"""The key service: root and standard keys over an HSM, shaped like IBM Key Protect API v2.

- :mod:`kinko.keys.model` — the lifecycle rules, pure (no I/O, clock or randomness);
- :mod:`kinko.keys.records` — the JSON form of those records in the store;
- :mod:`kinko.keys.auth` — bearer tokens, principals and the role table;
- :mod:`kinko.keys.audit` — the JSON-lines audit log;
- :mod:`kinko.keys.service` — :class:`~kinko.keys.service.KeyService`, one method per Key
  Protect operation, over the Store and Hsm ports.
"""

from __future__ import annotations
