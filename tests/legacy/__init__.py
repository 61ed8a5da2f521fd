"""Wire-level tools for 4.x compatibility tests: the legacy-client emulator and a scripted fake sender."""
