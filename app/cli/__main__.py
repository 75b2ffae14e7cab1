"""`python -m app.cli`: the same as `pyshelf` (app/__main__.py) without its fast healthcheck."""

from app.cli import run

run()
