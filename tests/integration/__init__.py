"""Integration tests against real parts (etcd-server, gRPC over unix sockets)."""
