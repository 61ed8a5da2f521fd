"""``hidra-eiger-sim``: a local DECTRIS DCU (SIMPLON REST + Stream V1 / V2) for tests, demos and benchmarks."""
