"""kinko: encryption at rest for Kubernetes-style clusters.

Values are sealed byte for byte as kube-apiserver seals them, driven by an ordinary
EncryptionConfiguration, with root keys reached through the Kubernetes KMS v2 plugin API.
"""

from __future__ import annotations

__version__ = "0.1.0"
