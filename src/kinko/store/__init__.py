"""kinko.store: key-value stores (etcd today; SQLite and the Store port come with the cluster store)."""
