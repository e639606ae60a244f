"""kinko.store: key-value stores (etcd today; SQLite and the Store port come later)."""
