"""Comparative benchmark: pyshelf against devpi-server and proxpi on one static upstream.

Run `python -m bench.compare [--quick]` from the repository root (`make bench`); see
bench/README.md. Only 127.0.0.1 is ever contacted.
"""
