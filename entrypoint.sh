#!/bin/sh
# `pyshelf` from a checkout or the image, where it is not installed (`pip install .` gives the
# same command on PATH): entrypoint.sh ARGS = pyshelf ARGS, `serve` when none is given.
#   entrypoint.sh [serve]        check DATA_DIR, migrate, bootstrap from env, become gunicorn
#   entrypoint.sh healthcheck    exit 0 when this server's /+status says 200 (Docker HEALTHCHECK)
#   entrypoint.sh COMMAND ...    user, token, index, backup, restore, ... (pyshelf --help)
# It stays in the directory it was started from: ./.env and a relative ENV_FILE or DATA_DIR
# mean the caller's directory.
set -eu
# Everything pyshelf and its commands create is for this user only: DATA_DIR holds the secret
# key that signs sessions, the database and private packages, and a backup holds all three.
# (pyshelf sets it itself too.)
umask 077

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)  # also when run through a symlink
if [ -n "${PYSHELF_PYTHON:-}" ]; then
    PY=$PYSHELF_PYTHON
elif [ -x "$HERE/.venv/bin/python" ]; then
    PY=$HERE/.venv/bin/python
else
    PY=python3
fi
# The package `app` next to this script, whatever the current directory.
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# In the image, DATA_DIR is a volume that the host prepares: when it is mounted read-only or
# belongs to another uid, say so with the fix in one line before SQLite fails obscurely.
# (On a bare machine, app/ops/prepare.py's own check names the chown to run on the real path.)
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

[ $# -gt 0 ] || set -- serve
case "$1" in
    -*|help|healthcheck|config) ;;
    *) check_volume ;;
esac
exec "$PY" -m app "$@"
