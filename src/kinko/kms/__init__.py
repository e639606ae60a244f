"""kinko.kms: the Kubernetes KMS v2 protocol on both sides: the client and the plugin server."""
