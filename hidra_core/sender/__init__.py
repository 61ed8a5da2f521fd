"""The sender: event source thread, router loop, storage link, ledger, local copy, and analysis clients."""
from hidra_core.sender.router import Sender

__all__ = ["Sender"]
