"""The storage receiver: receiving loop, commit thread, and the 4.x status board."""
from hidra_core.receiver.loop import Receiver

__all__ = ["Receiver"]
