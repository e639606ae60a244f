"""Unit tests of the pure core and its in-memory twins."""
