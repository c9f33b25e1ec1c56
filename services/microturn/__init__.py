"""microturn: an open serving stack for full-duplex interaction models."""

__version__ = "0.1.0"
