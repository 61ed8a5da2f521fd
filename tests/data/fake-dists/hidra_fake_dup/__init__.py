"""Second fake distribution: exports ``hidra_fake_duplicate`` like hidra-fake does (conflict tests)."""
