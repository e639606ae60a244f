"""kinko.k8s: Kubernetes object encodings (protobuf payloads of core/v1 Secret and ConfigMap)."""
