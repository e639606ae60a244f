"""kinko.api: HTTPS transports (FastAPI): the Key Protect-compatible key service."""
