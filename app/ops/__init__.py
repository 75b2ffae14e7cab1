"""Admin operations: prepare, backup, restore, verify, prefetch, the devpi import."""
