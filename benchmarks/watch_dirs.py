"""inotify at scale: a daemon watching a tree of ``--dirs`` directories (default 20,000).

Measures, with a real ``imgwatch watch`` on a real tree (Milvus Lite, ``random:0`` weights):

1. start-up: seconds until ``status`` answers, and until the root is watched (inotify or polling, as
   ``status`` reports it); the inotify watches the daemon holds (counted from the kernel's own
   ``/proc/PID/fdinfo``); its RSS (VmRSS, VmHWM) once watching;
2. a new image in the deepest directory: seconds until it is indexed (the model loads for it, so
   that load is reported apart, from the daemon's log);
3. with root (or ``--no-limit``: skipped), the same tree with ``fs.inotify.max_user_watches``
   lowered below what it needs (restored afterwards): the mode ``status`` reports (polling), the log
   line that says so and names the fix, and a new file found.

    python benchmarks/watch_dirs.py                 # 20,000 directories
    python benchmarks/watch_dirs.py --dirs 2000     # a quick run

Writes ``results/watch_dirs.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batched_writes
from batched_writes import Daemon, _catalog_paths

from imgwatch.samples import photo

HERE = Path(__file__).resolve().parent
WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


def build_tree(root: Path, dirs: int) -> Path:
    """``dirs`` directories, 100 per parent and three levels deep as a photo library's
    year/event/day folders are; returns the deepest one."""
    deepest = root
    for i in range(dirs):
        deepest = root / f"y{i // 10_000:02d}" / f"e{i // 100 % 100:02d}" / f"d{i % 100:02d}"
        deepest.mkdir(parents=True, exist_ok=True)
    return deepest


def _watches(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                count += sum(line.startswith("inotify wd:") for line in text.splitlines())
        except OSError:
            continue
    return count


def _memory_mib(pid: int) -> dict[str, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def _watch_mode(daemon: Daemon, root: Path) -> str | None:
    status = daemon._status()
    if status is None:
        return None
    for entry in status.get("roots", []):
        if entry["path"] == str(root):
            watch: str | None = entry["watch"]
            return watch
    return None


def run(work: Path, dirs: int, *, label: str) -> dict[str, Any]:
    root, data = work / f"tree-{label}", work / f"data-{label}"
    started = time.monotonic()
    deepest = build_tree(root, dirs)
    row: dict[str, Any] = {"dirs": dirs, "tree_build_s": round(time.monotonic() - started, 1)}
    begin = time.monotonic()
    daemon = Daemon(data, root)
    try:
        while daemon._status() is None:
            time.sleep(0.05)
        row["answers_after_s"] = round(time.monotonic() - begin, 2)
        while not (mode := _watch_mode(daemon, root)):
            time.sleep(0.05)
        row["watching_after_s"] = round(time.monotonic() - begin, 2)
        row["mode"] = mode
        daemon.settled()
        row["idle_after_s"] = round(time.monotonic() - begin, 2)
        row["inotify_watches"] = _watches(daemon.process.pid)
        row |= _memory_mib(daemon.process.pid)
        image = deepest / "new.jpg"
        photo(7, (320, 240)).save(image, "JPEG", quality=90)
        dropped = time.monotonic()
        while str(image) not in (_catalog_paths(data) or set()):
            if time.monotonic() - dropped > 600:
                raise SystemExit("the new image was not indexed within 600 s")
            time.sleep(0.05)
        row["new_image_indexed_s"] = round(time.monotonic() - dropped, 2)
        loaded = re.search(r"model loaded in ([0-9.]+) s", daemon.log.read_text())
        row["of_which_model_load_s"] = float(loaded.group(1)) if loaded else None
        refused = [line for line in daemon.log.read_text().splitlines() if "watch limit is reached" in line]
        row["limit_log_line"] = refused[0].split(" ", 3)[-1][:240] if refused else None
    finally:
        daemon.stop()
        shutil.rmtree(data, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dirs", type=int, default=20_000)
    parser.add_argument("--no-limit", action="store_true", help="skip the lowered-limit run")
    args = parser.parse_args()
    # The model is not what this measures: float starts without int8's one-time compile.
    base_env = batched_writes._env
    batched_writes._env = lambda data: base_env(data) | {"IMGWATCH_PRECISION": "float"}
    results: dict[str, Any] = {"dirs": args.dirs, "max_user_watches": int(WATCHES.read_text())}
    with tempfile.TemporaryDirectory(
        prefix="imgwatch-watch-dirs-", dir=os.environ.get("TMPDIR", "/work")
    ) as tmp:
        work = Path(tmp)
        results["inotify"] = run(work, args.dirs, label="inotify")
        if not args.no_limit and os.geteuid() == 0:
            before = WATCHES.read_text()
            try:
                WATCHES.write_text(str(args.dirs // 2))
                results["limit_lowered_to"] = args.dirs // 2
                results["lowered"] = run(work, args.dirs, label="lowered")
            finally:
                WATCHES.write_text(before)
    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "watch_dirs.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = _markdown(results)
    (out / "watch_dirs.md").write_text(markdown)
    print(markdown)


def _markdown(results: dict[str, Any]) -> str:
    runs = [("inotify limit as configured", results["inotify"])]
    if "lowered" in results:
        runs.append((f"max_user_watches lowered to {results['limit_lowered_to']:,}", results["lowered"]))
    keys = [
        "mode",
        "answers_after_s",
        "watching_after_s",
        "idle_after_s",
        "inotify_watches",
        "VmRSS",
        "VmHWM",
        "new_image_indexed_s",
        "of_which_model_load_s",
        "limit_log_line",
    ]
    lines = [
        f"# A daemon watching {results['dirs']:,} directories",
        "",
        f"`fs.inotify.max_user_watches` here: {results['max_user_watches']:,}. Seconds from the daemon's "
        "launch; RSS in MiB once idle (before the model loads); the new image's time includes loading "
        "the model (fp32/bf16: no int8 compile).",
        "",
        "| measure | " + " | ".join(name for name, _ in runs) + " |",
        "| --- |" + " --- |" * len(runs),
        *(f"| {key} | " + " | ".join(str(row.get(key, "-")) for _, row in runs) + " |" for key in keys),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
