#!/bin/sh
# The one way to start pyshelf, in the container and on a bare machine:
#   entrypoint.sh [serve]        check DATA_DIR, migrate, bootstrap from env, exec gunicorn
#   entrypoint.sh healthcheck    exit 0 when this server's /+status says 200 (Docker HEALTHCHECK)
#   entrypoint.sh COMMAND ...    anything else goes to app.cli with the same configuration:
#                                user, token, index, refresh, backup, restore, verify, cache,
#                                prefetch, ... (see docs/operations.md)
set -eu
# Everything pyshelf and its commands create is for this user only: DATA_DIR holds the secret
# key that signs sessions, the database and private packages, and a backup holds all three.
umask 077

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

# In the image, DATA_DIR is a volume that the host prepares: when it is mounted read-only or
# belongs to another uid, say so with the fix in one line before SQLite fails obscurely.
# (On a bare machine, app/prepare.py's own check names the chown to run on the real path.)
check_volume() {
    [ -n "${PYSHELF_IN_CONTAINER:-}" ] || return 0
    dir=${DATA_DIR:-/data}
    [ -d "$dir" ] || return 0
    uid=$(id -u)
    gid=$(id -g)
    for path in "$dir" "$dir"/pyshelf.sqlite3*; do
        [ -e "$path" ] || continue
        if [ "$path" = "$dir" ]; then
            probe="$dir/.write-test-$$"
            error=$(touch "$probe" 2>&1 && rm -f "$probe") && continue
        else
            [ -w "$path" ] && continue
            error="not writable"
        fi
        case "$error" in
            *"Read-only file system"*)
                echo "pyshelf: $dir is mounted read-only, but pyshelf writes its database and files there; mount the volume read-write (no :ro after -v ...:$dir)" >&2
                ;;
            *)
                owner=$(stat -c %u:%g "$path")
                echo "pyshelf: $path belongs to uid:gid $owner and is not writable by uid $uid, which pyshelf runs as; fix: docker run --rm --user 0 -v VOLUME:$dir --entrypoint chown IMAGE -R $uid:$gid $dir (a host directory: chown -R $uid:$gid DIR)" >&2
                ;;
        esac
        exit 1
    done
}

command=${1:-serve}
case "$command" in
    serve)
        check_volume
        "$PY" -m app.cli prepare
        # gunicorn reads WEB_CONCURRENCY itself and fails on an empty one (.env.example's
        # `WEB_CONCURRENCY=` passed by compose's env_file): empty means our default.
        [ -n "${WEB_CONCURRENCY:-}" ] || unset WEB_CONCURRENCY
        exec "$PY" -m gunicorn --config "$HERE/gunicorn.conf.py" "app:create_app()"
        ;;
    healthcheck)
        # Where and how gunicorn listens comes from gunicorn.conf.py itself, so the two agree.
        exec "$PY" - "$HERE/gunicorn.conf.py" <<'EOF'
import os
import runpy
import ssl
import sys
import urllib.request

conf = runpy.run_path(sys.argv[1])
host, _, port = conf["bind"].rpartition(":")
if host in ("0.0.0.0", "[::]", "::", ""):
    host = "127.0.0.1"
scheme = "https" if conf.get("certfile") else "http"
url = f"{scheme}://{host}:{port}{os.environ.get('SCRIPT_NAME', '')}/+status"
# A liveness probe on the server's own address: the certificate names the public host.
context = ssl._create_unverified_context()
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
)
try:
    with opener.open(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"pyshelf: healthcheck {url}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
        ;;
    -h|--help|help)
        "$PY" -m app.cli --help
        ;;
    *)
        check_volume
        exec "$PY" -m app.cli "$@"
        ;;
esac
