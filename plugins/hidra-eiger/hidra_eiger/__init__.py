"""HiDRA plugins for DECTRIS EIGER / EIGER2 detectors; ``hidra_eiger.sim`` plays the detector control unit."""
