"""HiDRA adapter for ACME detectors: an event source for their file-closed notices, and a metadata hook."""
__version__ = "0.1.0"
