"""kinko test suite."""
