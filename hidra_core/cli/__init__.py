"""The ``hidra`` command line."""
from hidra_core.cli.main import main

__all__ = ["main"]
