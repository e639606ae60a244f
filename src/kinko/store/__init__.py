"""kinko.store: the Store port (:mod:`.port`) and its adapters.

``memory`` (the in-memory twin), ``sqlite`` (one file, one machine) and ``etcd_store`` (an
etcd cluster, over the client in ``etcd``) keep one contract; ``rules`` holds the argument
checks they share.
"""
