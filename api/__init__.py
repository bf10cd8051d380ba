"""The HTTP API: thin routers over the audit domain."""
