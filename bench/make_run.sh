#!/usr/bin/env bash
# Seconds from a fresh copy of the repository to the first 200 of `make run` (an operator's
# first start without Docker): unpack REF (default HEAD) into a temporary folder, run `make run`
# there on a free loopback port with its own ./data, poll /+status, print the seconds, stop it.
#   bash bench/make_run.sh [REF]        e.g. REF=main for the time before a change
# pip installs through this machine's own pip configuration and cache: warm or cold, say which
# next to the figure in bench/RESULTS.md ("Measured by hand"). Not a test: nothing asserts it.
set -euo pipefail

REF=${1:-HEAD}
POLL_SECONDS=0.2
MAX_POLLS=3000  # 10 minutes
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
server=
cleanup() {
    [ -z "$server" ] || kill -TERM -- "-$server" 2>/dev/null || true
    [ -z "$server" ] || wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

git -C "$repo" archive "$REF" | tar -x -C "$work"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

start=$(date +%s.%N)
# Its own process group (setsid), so that make, the server and its workers stop together.
(cd "$work" && exec env -u ENV_FILE -u DATA_DIR -u DATABASE_URL -u STORAGE_URL \
    HOST=127.0.0.1 PORT="$port" ADMIN_PASSWORD=bench-password \
    MIRROR_URL=http://127.0.0.1:9/simple/ setsid make run >"$work/make-run.log" 2>&1) &
server=$!
status=000
for _ in $(seq "$MAX_POLLS"); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/+status" || true)
    [ "$status" = 200 ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep "$POLL_SECONDS"
done
end=$(date +%s.%N)
if [ "$status" != 200 ]; then
    echo "make run gave no 200 (last status $status):" >&2
    tail -20 "$work/make-run.log" >&2
    exit 1
fi
venv_size=$(du -sm "$work/.venv" | cut -f1)
printf '%s: first 200 after %.1f s; .venv %s MB\n' \
    "$(git -C "$repo" rev-parse --short "$REF")" "$(echo "$end - $start" | bc)" "$venv_size"
