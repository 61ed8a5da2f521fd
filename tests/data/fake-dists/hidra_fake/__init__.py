"""Fake HiDRA plugins for discovery tests. Visible to every test in the suite (pytest ``pythonpath``), so each
one is harmless when loaded by accident: no sockets, no threads, no output, observers never raise."""
