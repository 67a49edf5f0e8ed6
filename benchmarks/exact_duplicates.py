"""How long `imgwatch duplicates --exact` takes over a catalog of 100k files.

Fills a real catalog (SQLite, migrated by Alembic) in a temp dir with ``--rows`` indexed rows, of
which ``--group-share`` are in groups of byte-identical copies (2 to 4 files a group). The members
of groups are real files on disk (one small JPEG per group, copied to each member), because the
command reads each member's pixel size from its header; the other rows name files that need not
exist (the command never opens them). Then it times, in this order:

- ``query``: the catalog's GROUP BY over the content hashes alone (``exact_duplicate_rows``);
- ``groups``: :func:`imgwatch.duplicates.find_exact_duplicates` (the query, plus a header read and a
  member record per grouped file);
- ``cli``: the whole command in a fresh process, ``python -X importtime -m imgwatch duplicates
  --exact --json`` with no daemon, from start to exit; its import log is checked for torch, pymilvus
  and numpy, which the command must not load.

    python benchmarks/exact_duplicates.py [--rows 100000] [--group-share 0.1] [--keep DIR]

Prints one JSON object with the timings and the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHUNK = 5000
#: Modules the command must not import: it reads the catalog only.
HEAVY = ("torch", "pymilvus", "numpy", "milvus_lite")


def fill(data_dir: Path, rows: int, group_share: float, seed: int) -> tuple[int, int]:
    """Write the catalog and the grouped files; returns (groups, grouped files)."""
    import sqlalchemy as sa
    from PIL import Image

    from imgwatch.services.catalog import FILES, open_catalog

    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by seed
    files = data_dir / "library"
    catalog = open_catalog(data_dir / "catalog.sqlite3")
    now = datetime.now(UTC).replace(tzinfo=None)
    grouped_target = int(rows * group_share)
    groups = grouped = 0
    pending: list[dict[str, Any]] = []
    key = 0

    def row(path: str, size: int, content: str) -> dict[str, Any]:
        return {
            "id": key,
            "path": path.encode(),
            "size": size,
            "mtime_ns": 1_700_000_000_000_000_000 + key,
            "content_hash": content,
            "state": "indexed",
            "has_vector": True,
            "signature": "synthetic",
            "created_at": now,
            "updated_at": now,
            "indexed_at": now,
        }

    try:
        while key < rows:
            if grouped < grouped_target:
                copies = min(rng.randint(2, 4), rows - key)
                colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
                buffer = io.BytesIO()
                Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
                data = buffer.getvalue()
                folder = files / f"g{groups // 1000:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                for copy in range(copies):
                    key += 1
                    path = folder / f"{groups:06d}-{copy}.jpg"
                    path.write_bytes(data)
                    pending.append(row(str(path), len(data), f"{groups:032x}"))
                groups += 1
                grouped += copies
            else:
                key += 1
                pending.append(row(f"/synthetic/unique/{key:07d}.jpg", 1000, f"{rng.getrandbits(128):032x}"))
            if len(pending) >= CHUNK:
                with catalog.engine.begin() as conn:
                    conn.execute(sa.insert(FILES), pending)
                pending = []
        if pending:
            with catalog.engine.begin() as conn:
                conn.execute(sa.insert(FILES), pending)
        catalog.optimise_storage()  # ANALYZE, as the daemon's maintenance job leaves a real catalog
    finally:
        catalog.close()
    return groups, grouped


def time_in_process(data_dir: Path) -> dict[str, Any]:
    from imgwatch.duplicates import find_exact_duplicates
    from imgwatch.services.catalog import open_catalog

    catalog = open_catalog(data_dir / "catalog.sqlite3")
    try:
        started = time.perf_counter()
        rows = catalog.exact_duplicate_rows()
        query = time.perf_counter() - started
        started = time.perf_counter()
        groups = find_exact_duplicates(catalog)
        whole = time.perf_counter() - started
    finally:
        catalog.close()
    unreadable = sum(m.width is None for g in groups for m in g.members)
    return {
        "query_s": round(query, 3),
        "groups_s": round(whole, 3),
        "groups_found": len(groups),
        "query_groups": len(rows),
        "unreadable_members": unreadable,
    }


def time_cli(data_dir: Path) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "XDG_CONFIG_HOME": str(data_dir / "config"),
        "IMGWATCH_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(REPO),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgwatch", "duplicates", "--exact", "--json"],
        env=env,
        capture_output=True,
        check=False,
        cwd=REPO,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the command failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    report = json.loads(done.stdout)
    return {
        "cli_s": round(seconds, 2),
        "cli_groups": len(report["groups"]),
        "cli_heavy_imports": sorted(m for m in HEAVY if m in imported),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--group-share", type=float, default=0.1, help="share of rows in exact groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="fill this directory and leave it there")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="imgwatch-exact-"))
    try:
        started = time.perf_counter()
        groups, grouped = fill(data_dir, args.rows, args.group_share, args.seed)
        fill_s = time.perf_counter() - started
        result: dict[str, Any] = {
            "rows": args.rows,
            "groups_planted": groups,
            "grouped_files": grouped,
            "fill_s": round(fill_s, 1),
            **time_in_process(data_dir),
            **time_cli(data_dir),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "cpu": platform.processor(),
            },
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if result["groups_found"] != groups or result["cli_groups"] != groups or result["cli_heavy_imports"]:
        raise SystemExit("wrong result: see groups_found, cli_groups and cli_heavy_imports above")


if __name__ == "__main__":
    main()
