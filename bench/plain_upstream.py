"""Benchmark: a warm `uv pip install` of a small dependency tree from a plain PEP 503 upstream.

The upstream (tests/fake_upstream.py, HTML only) gives no sizes and no PEP 658 sidecars. A first
install through pyshelf's mirror caches every wheel; then a second client, with no cache of its
own, installs the same tree again (`uv pip install`: every wheel is needed) and resolves it
(`uv pip compile`: only metadata is; `pip install --dry-run` for comparison), `--runs` times
each. Printed per client run: what it asked
pyshelf for (project pages, `.metadata` sidecars, whole wheels, ranges of wheels) and its
seconds (median). Run it on two checkouts to compare before and after. Only 127.0.0.1 is
contacted; uv comes from PATH (or PYSHELF_TEST_UV).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/plain_upstream.py`
    sys.path.insert(0, str(ROOT))

from tests.builders import make_wheel  # noqa: E402 - needs ROOT on sys.path first
from tests.conftest import LiveServer, clean_env  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

SEED = 20_261_207
PROJECTS = 12  # plain-00 depends on 01..03, each of those on the next ones: a small tree
WHEEL_BYTES = (50_000, 2_000_000)  # 50 kB to 2 MB, log-uniform
UV_TIMEOUT_SECONDS = 300
LINE_RE = re.compile(r'"(?P<method>GET|HEAD) (?P<path>\S+) HTTP/1\.1" (?P<status>\d+)')


def publish(upstream: FakeUpstream) -> None:
    """The tree: project i depends on i+1..i+3 (those that exist), wheels of random bytes."""
    rng = random.Random(SEED)  # noqa: S311 - test data, not secrets
    low, high = (x.bit_length() for x in WHEEL_BYTES)
    for i in range(PROJECTS):
        name = f"plain-{i:02d}"
        size = 1 << rng.randint(low - 1, high - 1)
        requires = [f"plain-{j:02d}>=1" for j in range(i + 1, min(i + 4, PROJECTS))]
        payload = {f"plain_{i:02d}/payload.bin": rng.randbytes(size)}
        upstream.add_file(name, *make_wheel(name, "1.0.0", requires_dist=requires, files=payload))


def run_uv(uv: str, index_url: str, target: Path | None) -> float:
    """Seconds of one `uv pip install` into an empty `target` (None: `uv pip compile`), with
    no client cache."""
    if target is None:
        command = [uv, "pip", "compile", "--no-config", "--no-cache", "-"]
    else:
        command = [uv, "pip", "install", "--no-config", "--no-cache", "--target", str(target)]
    command += ["--python", sys.executable, "--index-url", index_url]
    command += [] if target is None else ["plain-00"]
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - uv, arguments built above
        command,
        input="plain-00\n" if target is None else None,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=UV_TIMEOUT_SECONDS,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"uv failed:\n{result.stdout}{result.stderr}")
    return seconds


def pip_dry_run(index_url: str) -> float:
    """Seconds of one `pip install --dry-run` (a resolution) with no client cache."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    command += ["--no-cache-dir", "--index-url", index_url, "plain-00"]
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - pip, arguments built above
        command, env=clean_env(), capture_output=True, text=True, timeout=UV_TIMEOUT_SECONDS
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"pip failed:\n{result.stdout}{result.stderr}")
    return seconds


def requests_by_kind(log: str) -> dict[str, int]:
    """The access log's requests: pages, sidecars, whole wheels and ranges of wheels."""
    kinds = {"pages": 0, "metadata": 0, "wheels": 0, "wheel ranges": 0}
    for match in LINE_RE.finditer(log):
        path, status = match["path"], match["status"]
        if "/+simple/" in path:
            kinds["pages"] += 1
        elif path.endswith(".metadata"):
            kinds["metadata"] += 1
        elif path.endswith(".whl"):
            kinds["wheel ranges" if status == "206" or match["method"] == "HEAD" else "wheels"] += 1
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    uv = os.environ.get("PYSHELF_TEST_UV") or shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not on PATH (or PYSHELF_TEST_UV)")
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as upstream:
        upstream.html_only = True
        publish(upstream)
        server = LiveServer(
            Path(tmp) / "data",
            {"ADMIN_PASSWORD": "bench-password-1", "MIRROR_URL": upstream.url},
        ).start()
        try:
            index_url = f"{server.url}/root/pypi/+simple/"
            run_uv(uv, index_url, Path(tmp) / "first")  # caches every wheel
            upstream.reset_counts()
            results = []
            runs = {
                "uv pip install": lambda n: run_uv(uv, index_url, Path(tmp) / f"{n}"),
                "uv pip compile": lambda _n: run_uv(uv, index_url, None),
                "pip install --dry-run": lambda _n: pip_dry_run(index_url),
            }
            for what, run in runs.items():
                start = len(server.log())
                seconds = [run(n) for n in range(args.runs)]
                results.append((what, seconds, requests_by_kind(server.log()[start:])))
        finally:
            server.stop()
    print(f"a second client, {PROJECTS} projects from a plain PEP 503 upstream, all cached")
    for what, seconds, kinds in results:
        per_run = {kind: count // args.runs for kind, count in kinds.items()}
        print(f"  {what}: {statistics.median(seconds):.2f} s (median of {args.runs}), {per_run}")
    print(f"  upstream requests after the first install: {upstream.count('/')}")


if __name__ == "__main__":
    main()
