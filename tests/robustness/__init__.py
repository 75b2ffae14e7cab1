"""Hostile-input property tests: fuzzed uploads, simple/JSON API requests and doc zips."""
