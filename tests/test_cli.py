"""The real ``imgwatch`` command as a subprocess on real folders: the contract scripts rely on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import html5lib
import pytest
from PIL import Image

from imgwatch.cli import EXIT_CONFIG, EXIT_FATAL, build_parser
from imgwatch.config import Settings
from imgwatch.samples import photo
from imgwatch.status import gather_status
from tests import forkserver
from tests.conftest import jpeg_bytes, write_photo
from tests.harness import clean_env
from tests.test_lock import held_elsewhere

pytestmark = pytest.mark.slow

# As root, drop the capabilities that let root read any file, so an unreadable file is unreadable.
_UNPRIVILEGED = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = clean_env()
    env.update(
        IMGWATCH_WEIGHTS="random:0",
        IMGWATCH_DATA_DIR=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),  # no stray user config file
    )
    return env


def imgwatch(
    tmp_path: Path,
    *args: str | bytes,
    unprivileged: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    prefix = _UNPRIVILEGED if unprivileged else []
    # In another working directory, `-m imgwatch` must still find this checkout's package.
    where = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])} if cwd else {}
    full_env = _env(tmp_path) | where | (env or {})
    if not prefix and forkserver.forkable(full_env):
        return forkserver.run(args, full_env, cwd=cwd, timeout=300)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "imgwatch", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        timeout=300,
        check=False,
    )


def _json(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {
        "index",
        "search",
        "status",
        "watch",
        "invoke",
        "compact",
        "reindex",
        "duplicates",
        "check",
        "forget",
        "dedupe",
        "migrate",
    }
    for name, command in commands.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    result = subprocess.run(
        [sys.executable, "-m", "imgwatch", "search", "--help"], capture_output=True, check=False
    )
    assert result.returncode == 0 and b"most similar" in result.stdout


def test_index_search_status_contract(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for seed in range(5):
        write_photo(photos / f"p{seed}.jpg", seed)
    odd = os.path.join(os.fsencode(photos), b'odd "name" \xff\n.jpg')
    with open(odd, "wb") as f:
        f.write(jpeg_bytes(photo(9)))

    first = imgwatch(tmp_path, "index", str(photos), "--json")
    summary = _json(first)  # exactly one JSON object on stdout: json.loads rejects anything more
    assert {k: summary[k] for k in ("added", "updated", "moved", "removed", "unchanged", "failed")} == {
        "added": 6,
        "updated": 0,
        "moved": 0,
        "removed": 0,
        "unchanged": 0,
        "failed": 0,
    }
    assert summary["seconds"] > 0  # the indexing work's own time, which benchmarks/ingest.py reports

    (photos / "p1.jpg").rename(photos / "p1-renamed.jpg")
    (photos / "p2.jpg").unlink()
    second = _json(imgwatch(tmp_path, "index", str(photos), "--json"))
    assert (second["moved"], second["removed"], second["unchanged"], second["added"]) == (1, 1, 4, 0)

    queries = [str(photos / "p3.jpg"), str(photos / "p0.jpg")]
    result = imgwatch(tmp_path, "search", *queries, "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == queries
    for query, line in zip(queries, lines, strict=True):
        assert len(line["results"]) == 3
        assert line["results"][0] == {"path": query, "score": pytest.approx(1.0, abs=1e-3)}
        scores = [r["score"] for r in line["results"]]
        assert scores == sorted(scores, reverse=True)
    # The non-UTF-8 name comes back in os.fsdecode form and maps back to the exact bytes.
    [odd_line] = _json_lines(imgwatch(tmp_path, "search", odd, "-k", "1", "--json"))
    assert os.fsencode(odd_line["results"][0]["path"]) == odd
    assert "\ufffd" not in odd_line["results"][0]["path"]

    status = _json(imgwatch(tmp_path, "status", "--json"))
    assert status["files"] == {"indexed": 5, "pending": 0, "failed": 0}
    assert status["vectors"] == 5
    assert status["daemon"] == {"running": False, "pid": None}
    assert status["extractor"]["weights"] == "random:0" and status["extractor"]["dimension"] == 4096
    assert status["data_dir"] == str(tmp_path / "data")
    assert status["milvus_uri"] == str(tmp_path / "data" / "vectors.db")
    # Where the collection stands against Milvus Lite's limits on this machine's memory.
    memory = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    capacity = status["capacity"]
    assert capacity["engine"] == "Milvus Lite" and capacity["vectors"] == 5 and capacity["dimension"] == 4096
    assert capacity["memory_bytes"] == memory and capacity["next"] is None
    assert 0 < capacity["limit"] == min(capacity["limits"].values())
    assert b"capacity:   Milvus Lite: 5 of about" in imgwatch(tmp_path, "status").stdout

    human = imgwatch(tmp_path, "search", queries[0], "-k", "2")
    assert human.returncode == 0
    assert queries[0].encode() in human.stdout and b"1.0000" in human.stdout


def _json_lines(result: subprocess.CompletedProcess[bytes]) -> list[Any]:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_bad_files_are_reported_without_failing_the_run(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for seed in range(3):
        write_photo(photos / f"p{seed}.jpg", seed)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("not a png")
    (photos / "cut.jpg").write_bytes(jpeg_bytes(photo(7))[:3000])
    locked = write_photo(photos / "locked.jpg", 8)
    locked.chmod(0)
    if os.geteuid() == 0 and not _UNPRIVILEGED:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")

    result = imgwatch(tmp_path, "index", str(photos), "--json", unprivileged=True)

    summary = _json(result)
    assert (summary["added"], summary["failed"]) == (3, 4)
    reasons = {Path(f["path"]).name: f["error"] for f in summary["failures"]}
    assert reasons["locked.jpg"] == "permission denied"
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "not a supported image" in reasons["text.png"]
    assert "cannot decode" in reasons["cut.jpg"]
    assert b"locked.jpg: permission denied" in result.stderr

    status = _json(imgwatch(tmp_path, "status", "--json", "--failed"))
    assert status["files"]["failed"] == 4
    assert {Path(f["path"]).name: f["error"] for f in status["failed_files"]} == reasons
    human = imgwatch(tmp_path, "status", "--failed")
    assert b"locked.jpg: permission denied" in human.stdout


def test_files_that_cannot_be_looked_at_keep_their_entries(tmp_path: Path) -> None:
    """Only ENOENT means gone. A directory that cannot be listed, and files that cannot be stat'ed
    (EACCES in a directory that may be listed but not entered), are left as they were, and said."""
    if os.geteuid() == 0 and not _UNPRIVILEGED:
        pytest.skip("running as root without setpriv: cannot make a directory unreadable")
    photos = tmp_path / "photos"
    write_photo(photos / "p0.jpg", 0)
    closed = photos / "closed"
    write_photo(closed / "c1.jpg", 1)
    listed = photos / "listed"
    write_photo(listed / "l2.jpg", 2)
    write_photo(listed / "deeper" / "l3.jpg", 3)
    assert _json(imgwatch(tmp_path, "index", str(photos), "--json"))["added"] == 4

    closed.chmod(0)
    listed.chmod(0o644)  # names readable, but no stat() of what is inside
    try:
        result = imgwatch(tmp_path, "index", str(photos), "--json", unprivileged=True)
        status = _json(imgwatch(tmp_path, "status", "--json", unprivileged=True))
    finally:
        closed.chmod(0o755)
        listed.chmod(0o755)

    summary = _json(result)
    assert (summary["removed"], summary["unchanged"], summary["failed"], summary["added"]) == (0, 1, 0, 0)
    assert {Path(s["path"]).name: s["error"] for s in summary["skipped"]} == {
        "closed": "cannot list directory: permission denied",
        "l2.jpg": "cannot stat: permission denied",
        "deeper": "cannot stat: permission denied",
    }
    assert f"skipped: {listed / 'l2.jpg'}: cannot stat: permission denied".encode() in result.stderr
    assert status["files"] == {"indexed": 4, "pending": 0, "failed": 0}
    assert status["vectors"] == 4
    # Readable again: every entry is still current, none had to be made again.
    again = _json(imgwatch(tmp_path, "index", str(photos), "--json"))
    assert (again["unchanged"], again["added"], again["removed"], again["skipped"]) == (4, 0, 0, [])


def test_fatal_errors_exit_non_zero_with_a_message(tmp_path: Path) -> None:
    missing = imgwatch(tmp_path, "index", str(tmp_path / "nowhere"))
    assert missing.returncode == EXIT_FATAL == 1 and b"does not exist" in missing.stderr

    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("batch_size = 'many'\n")
    config = imgwatch(tmp_path, "status", "--config", str(bad_config))
    # 78, sysexits' EX_CONFIG: what the systemd units' RestartPreventExitStatus= names.
    assert (
        config.returncode == EXIT_CONFIG == 78 and b"batch_size must be a positive integer" in config.stderr
    )


def test_watch_with_a_bad_setting_exits_ex_config_and_one_that_may_pass_exits_1(tmp_path: Path) -> None:
    """`imgwatch watch` that no restart can cure ends with EXIT_CONFIG, the status the systemd units
    do not restart (tests/test_systemd.py runs the unit's own command with a bad config file); a
    failure that may pass (another process holds the data dir) keeps EXIT_FATAL, and is restarted."""
    root = tmp_path / "photos"
    root.mkdir()
    from_env = imgwatch(tmp_path, "watch", str(root), env={"IMGWATCH_POLL_INTERVAL": "-1"})
    assert from_env.returncode == EXIT_CONFIG, from_env.stderr
    assert b"in environment variable IMGWATCH_POLL_INTERVAL: poll_interval must be a positive" in (
        from_env.stderr
    )

    with _lock_held_elsewhere(tmp_path / "data", "index"):
        busy = imgwatch(tmp_path, "watch", str(root))
    assert busy.returncode == EXIT_FATAL, busy.stderr
    assert b"is in use by PID" in busy.stderr


def test_changed_extractor_is_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_photo(photos / "a.jpg", 1)
    _json(imgwatch(tmp_path, "index", str(photos), "--json"))

    refused = imgwatch(tmp_path, "index", str(photos), "--weights", "random:1")

    assert refused.returncode == 1
    assert b"different feature extractor" in refused.stderr and b"--rebuild" in refused.stderr


def test_a_data_dir_with_url_and_config_syntax_in_its_name_works(tmp_path: Path) -> None:
    """``?`` and ``#`` mean something in a URL, ``%`` in Alembic's (ConfigParser) settings."""
    photos = tmp_path / "photos"
    write_photo(photos / "a.jpg", 1)
    data = tmp_path / "da%ta?x=1#frag"
    odd = {"IMGWATCH_DATA_DIR": str(data)}

    assert _json(imgwatch(tmp_path, "index", str(photos), "--json", env=odd))["added"] == 1
    status = _json(imgwatch(tmp_path, "status", "--json", env=odd))

    assert (status["catalog"], status["files"]["indexed"]) == (str(data / "catalog.sqlite3"), 1)
    assert (data / "catalog.sqlite3").is_file()
    # Nothing made at a truncated path ("da%ta", "da%ta?x=1"): the stores are where they were asked.
    assert {p.name for p in tmp_path.iterdir()} - {"config"} == {"photos", data.name}


def test_second_process_on_the_same_data_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with _lock_held_elsewhere(tmp_path / "data", "index") as holder:
        result = imgwatch(tmp_path, "index", str(tmp_path))
        assert result.returncode == 1
        assert f"PID {holder.pid} (imgwatch index)".encode() in result.stderr


def test_status_reports_a_running_daemon_without_touching_its_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with _lock_held_elsewhere(data, "watch") as holder:
        report = gather_status(Settings(data_dir=data, weights="random:0"))
        assert report["daemon"] == {"running": True, "pid": holder.pid}
        assert holder.poll() is None  # still running, still holding its lock


def _lock_held_elsewhere(data_dir: Path, command: str) -> contextlib.AbstractContextManager[Any]:
    """Another process holding the data dir lock, as a daemon or a long index run would."""
    code = (
        "from pathlib import Path; from imgwatch.lock import DataDirLock; "
        f"DataDirLock(Path(sys.argv[1]), {command!r}).acquire()"
    )
    return held_elsewhere(data_dir, code)


def _library(tmp_path: Path) -> tuple[Path, bytes]:
    """Five scenes, a half-size copy of p2, and p9 under a name that is not UTF-8 (returned)."""
    photos = tmp_path / "photos"
    for seed in range(5):
        write_photo(photos / f"p{seed}.jpg", seed)
    (photos / "p2-half.jpg").write_bytes(jpeg_bytes(photo(2, (480, 360)).resize((240, 180))))
    odd = os.path.join(os.fsencode(photos), b"caf\xe9 <9> & 'x'.jpg")
    with open(odd, "wb") as f:
        f.write(jpeg_bytes(photo(9, (480, 360))))
    _json(imgwatch(tmp_path, "index", str(photos), "--json"))
    return photos, odd


def test_search_paths_only_min_score_and_html_sheet(tmp_path: Path) -> None:
    photos, odd = _library(tmp_path)
    query = tmp_path / "query-of-p2.jpg"
    query.write_bytes(jpeg_bytes(photo(2, (480, 360)), quality=40))
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"  # webbrowser honours $BROWSER: record what it was asked to open
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)
    page = tmp_path / "out.html"

    result = imgwatch(
        tmp_path,
        "search",
        str(query),
        "-k",
        "7",
        "-f",
        "--html",
        str(page),
        "--open",
        env={"BROWSER": f"{browser} %s"},
    )

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    lines = result.stdout.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 8
    assert lines[0] == os.fsencode(photos / "p2.jpg") and lines[1] == os.fsencode(photos / "p2-half.jpg")
    assert odd in lines  # the exact bytes of a non-UTF-8 name, ready for xargs
    assert opened.read_text() == page.resolve().as_uri()
    document = html5lib.HTMLParser(strict=True).parse(page.read_bytes())
    ns = "{http://www.w3.org/1999/xhtml}"
    captions = ["".join(c.itertext()) for c in document.iter(f"{ns}figcaption")]
    assert captions[0] == str(query)  # the query on top
    score, first = captions[1].split(" ", 1)
    assert first == str(photos / "p2.jpg") and float(score) > 0.99  # the expected first result
    assert any(c.endswith("caf\\xe9 <9> & 'x'.jpg") for c in captions)
    assert len([i for i in document.iter(f"{ns}img") if i.get("src", "").startswith("data:image/jpeg")]) == 8

    scores = [
        r["score"] for r in _json_lines(imgwatch(tmp_path, "search", str(query), "--json"))[0]["results"]
    ]
    floor = (scores[2] + scores[3]) / 2
    [filtered] = _json_lines(imgwatch(tmp_path, "search", str(query), "--json", "--min-score", str(floor)))
    assert [r["score"] for r in filtered["results"]] == scores[:3]


def test_more_like_this_reads_no_file_and_pipes_nul_separated(tmp_path: Path) -> None:
    if os.geteuid() == 0 and not _UNPRIVILEGED:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    photos, odd = _library(tmp_path)
    (photos / "p2.jpg").chmod(0)  # unreadable now; its vector is in the index
    (photos / "p4.jpg").unlink()  # gone from disk, still in the catalog

    like = [str(photos / "p2.jpg"), "photos/p4.jpg"]  # a relative query resolves against the cwd

    [p2, p4] = _json_lines(
        imgwatch(tmp_path, "search", "--like", *like, "-k", "3", "--json", unprivileged=True, cwd=tmp_path)
    )

    assert p2["query"] == str(photos / "p2.jpg") and p4["query"] == "photos/p4.jpg"
    assert p2["results"][0]["path"] == str(photos / "p2-half.jpg")
    assert str(photos / "p2.jpg") not in [r["path"] for r in p2["results"]]  # not its own result
    assert len(p4["results"]) == 3 and str(photos / "p4.jpg") not in [r["path"] for r in p4["results"]]

    nul = imgwatch(tmp_path, "search", "--like", os.fsdecode(odd), "-k", "6", "-0")
    assert nul.returncode == 0, nul.stderr
    others = {os.fsencode(photos / f"{name}.jpg") for name in ("p0", "p1", "p2", "p2-half", "p3", "p4")}
    assert nul.stdout.endswith(b"\0") and set(nul.stdout[:-1].split(b"\0")) == others
    # Through xargs -0 as a user would: every name arrives intact (p4 is gone: stat says so).
    piped = subprocess.run(["xargs", "-0", "stat", "-c", "%n"], input=nul.stdout, capture_output=True)
    assert set(piped.stdout.splitlines()) == others - {os.fsencode(photos / "p4.jpg")}

    missing = imgwatch(tmp_path, "search", "--like", str(tmp_path / "elsewhere.jpg"), "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stdout)["error"] == "not in the index"
    assert b"not in the index" in missing.stderr


def test_duplicates_finds_the_planted_groups_only(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for seed in range(8):
        write_photo(photos / f"p{seed}.jpg", seed)
    original = photo(3, (480, 360))
    (photos / "copies").mkdir()
    (photos / "copies" / "p3-small.jpg").write_bytes(
        jpeg_bytes(original.resize((160, 120), Image.Resampling.LANCZOS))
    )
    (photos / "copies" / "p3-q30.jpg").write_bytes(jpeg_bytes(original, quality=30))
    (photos / "copies" / "p6.png").write_bytes(_png(photo(6, (480, 360))))
    _json(imgwatch(tmp_path, "index", str(photos), "--json"))
    page = tmp_path / "dups.html"

    result = imgwatch(tmp_path, "duplicates", "--threshold", "0.99", "--json", "--html", str(page))

    report = _json(result)
    assert list(report) == ["groups"]
    assert [(g["paths"], set(g)) for g in report["groups"]] == [
        (
            sorted(
                [
                    str(photos / "copies" / "p3-q30.jpg"),
                    str(photos / "copies" / "p3-small.jpg"),
                    str(photos / "p3.jpg"),
                ]
            ),
            {"kind", "max_score", "members", "paths"},
        ),
        (
            [str(photos / "copies" / "p6.png"), str(photos / "p6.jpg")],
            {"kind", "max_score", "members", "paths"},
        ),
    ]
    assert all(0.99 <= g["max_score"] <= 1.0 + 1e-5 for g in report["groups"])
    html5lib.HTMLParser(strict=True).parse(page.read_bytes())

    bad = imgwatch(tmp_path, "duplicates", "--threshold", "1.5")
    assert bad.returncode == 1 and b"--threshold" in bad.stderr


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``imgwatch status | head -0``: the pipe's reader is gone before the first write. The command
    stops with 141 (as a process SIGPIPE ends), with no traceback, also from the exit's flush."""
    from tests.harness import cli_env

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "imgwatch", "status"],
            env=cli_env(tmp_path / "data"),
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert b"Traceback" not in done.stderr and b"Exception ignored" not in done.stderr, done.stderr
