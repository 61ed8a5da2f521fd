"""HiDRA plugin for DECTRIS PILATUS camservers: the ``pilatus`` event source."""
