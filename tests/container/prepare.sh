#!/usr/bin/env bash
# Make this machine able to build and run the image without a Docker engine (shared/CONTAINER.md):
# Debian's rootful podman, and a debootstrap'ed local base image standing in for python:3.12-slim.
# Idempotent: on a warm machine both steps are skipped. Needs root (CI runs as root).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/python-base:bookworm}
SUITE=bookworm  # Debian 12: Python 3.11, so the Dockerfile must work on 3.11 and 3.12
TOOLS=(podman runc buildah debootstrap iptables netavark aardvark-dns uidmap slirp4netns
       fuse-overlayfs catatonit openssl)
: "${CONTAINERS_CONF:?export CONTAINERS_CONF=tests/container/containers.conf (make test-container does)}"

missing=()
for package in "${TOOLS[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "prepare.sh: missing ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "prepare.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! podman image exists "$BASE_IMAGE"; then
    echo "prepare.sh: making the base image $BASE_IMAGE with debootstrap (about a minute)"
    root=$(mktemp -d)
    trap 'rm -rf "$root" "$root.log"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$root" >"$root.log" 2>&1 || { cat "$root.log" >&2; exit 1; }
    # python:3.12-slim has `python` and `pip` on PATH and no PEP 668 marker; so does this one.
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar -C "$root" -c . | podman import --quiet --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
fi
podman --version
