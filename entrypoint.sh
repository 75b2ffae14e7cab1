#!/bin/sh
# The one way to start pyshelf, in the container and on a bare machine:
#   entrypoint.sh [serve]          check DATA_DIR, migrate, bootstrap from env, exec gunicorn
#   entrypoint.sh user|token|index|refresh ...   admin commands (see README)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
if [ -n "${PYSHELF_PYTHON:-}" ]; then
    PY=$PYSHELF_PYTHON
elif [ -x "$HERE/.venv/bin/python" ]; then
    PY=$HERE/.venv/bin/python
else
    PY=python3
fi
export PYTHONUNBUFFERED=1

command=${1:-serve}
case "$command" in
    serve)
        "$PY" -m app.cli prepare
        exec "$PY" -m gunicorn --config "$HERE/gunicorn.conf.py" "app:create_app()"
        ;;
    -h|--help|help)
        "$PY" -m app.cli --help
        ;;
    *)
        exec "$PY" -m app.cli "$@"
        ;;
esac
