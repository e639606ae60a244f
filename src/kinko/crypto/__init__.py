"""kinko.crypto: the pure core. Bytes in, bytes out; no I/O, no clock, no randomness of its own."""
