"""The cluster store: Kubernetes-style core/v1 Secrets and ConfigMaps, encrypted at rest.

:mod:`kinko.cluster.resources` is the pure core (parse, validate, serialise, storage keys);
it does no I/O and reads no clock.
"""

from __future__ import annotations
