"""``imgwatch dedupe``: the plan changes nothing; ``--yes`` moves exactly the planned files into the real
freedesktop.org trash (``$XDG_DATA_HOME`` in tmp_path), logs each move and drops it from the index at
once, locally and through a running daemon; the keep rules, protected folders and verdicts decide
what stays; a file that cannot go is reported while the others go."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from imgwatch.commands.deduping import apply_plan, local_plan
from imgwatch.config import Settings, load_settings
from imgwatch.dedupe import KEEP_RULES, Member, Near, plan_from_index, plan_group, stored_scores
from imgwatch.duplicates import DuplicateGroup, find_duplicates
from imgwatch.samples import photo
from imgwatch.trash import discard_keeping, move_to_trash
from imgwatch.verdicts import duplicate_catalog, mark_distinct
from tests import forkserver
from tests.conftest import REPO, OpenContext, index, jpeg_bytes, write_photo
from tests.harness import cli_env
from tests.namespaces import mount_namespace
from tests.test_cli import _UNPRIVILEGED

pytestmark = pytest.mark.slow

#: Seeded random weights score copies of a scene above 0.99 and unrelated scenes up to ~0.96.
THRESHOLD = 0.99


def _homes(tmp_path: Path) -> dict[str, str]:
    # HOME on tmp_path's filesystem too: send2trash uses the home trash only for files on the same
    # device as $HOME (else the file's own volume's .Trash-$UID), and it must exist.
    (tmp_path / "home").mkdir(exist_ok=True)
    return {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def trash_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For in-process moves: tmp_path's home and trash, as a process started with ``_homes`` has
    them (send2trash reads XDG_DATA_HOME once, when it is imported)."""
    from send2trash import plat_other

    for name, value in _homes(tmp_path).items():
        monkeypatch.setenv(name, value)
    xdg = os.fsencode(tmp_path / "xdg")
    monkeypatch.setattr(plat_other, "XDG_DATA_HOME", xdg)
    monkeypatch.setattr(plat_other, "HOMETRASH_B", os.path.join(xdg, b"Trash"))
    monkeypatch.setattr(plat_other, "HOMETRASH", os.fsdecode(os.path.join(xdg, b"Trash")))
    return tmp_path / "xdg" / "Trash"


def _cli(tmp_path: Path, *args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real command on tmp_path's data dir, with tmp_path's home and trash."""
    env = cli_env(tmp_path / "data") | _homes(tmp_path)
    if not prefix and forkserver.forkable(env):
        return forkserver.run(args, env, timeout=300)
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "imgwatch", *args],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )


def _json(result: subprocess.CompletedProcess[bytes], status: int = 0) -> Any:
    assert result.returncode == status, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def _trash(tmp_path: Path) -> dict[str, Path]:
    """Original path -> its file in the trash, from the trash's own ``.trashinfo`` files."""
    trash = tmp_path / "xdg" / "Trash"
    found = {}
    for info in sorted((trash / "info").glob("*.trashinfo")):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(info.read_text())
        found[unquote(parser["Trash Info"]["Path"])] = trash / "files" / info.name.removesuffix(".trashinfo")
    return found


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _copy(source: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return str(target)


def _index(open_ctx: OpenContext, root: Path) -> None:
    with open_ctx() as ctx:
        summary = index(ctx, root)
    assert summary.failed == 0, summary


def _index_state(open_ctx: OpenContext) -> tuple[list[Any], set[int]]:
    """Every catalog row as it is, and the ids the vector store holds."""
    with open_ctx(model=False) as ctx:
        records = sorted(ctx.catalog.ids_with_vectors().values(), key=lambda r: r.id)
        return records, ctx.vectors.all_ids()


def _planned(plan: dict[str, Any]) -> tuple[set[str], set[str]]:
    groups = [g for g in plan["groups"] if g["skipped"] is None]
    return (
        {d["path"] for g in groups for d in g["kept"]},
        {d["path"] for g in groups for d in g["discarded"]},
    )


def test_the_plan_changes_nothing_and_yes_moves_exactly_the_planned_files_to_the_trash(
    tmp_path: Path, open_ctx: OpenContext
) -> None:
    lib = tmp_path / "lib"
    a = write_photo(lib / "a.jpg", 1, size=(64, 48))
    b = write_photo(lib / "b.jpg", 2, size=(64, 48))
    write_photo(lib / "c.jpg", 3, size=(64, 48))
    copy_of = {
        _copy(a, lib / "sub" / "a-copy.jpg"): str(a),
        _copy(a, lib / "zz-copy.jpg"): str(a),
        _copy(b, lib / "x" / "y" / "b.jpg"): str(b),
    }
    copies = set(copy_of)
    _index(open_ctx, lib)
    before, index_before = _tree(lib), _index_state(open_ctx)

    plan = _json(_cli(tmp_path, "dedupe", "--keep", "shortest-path", "--exact", "--json"))
    assert plan["applied"] is False
    kept, discarded = _planned(plan)
    assert (kept, discarded) == ({str(a), str(b)}, copies)
    assert _tree(lib) == before
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "data" / "dedupe-log.jsonl").exists()
    assert _index_state(open_ctx) == index_before

    done = _json(_cli(tmp_path, "dedupe", "--keep", "shortest-path", "--exact", "--yes", "--json"))
    results = {r["path"]: r for g in done["groups"] for r in g["results"]}
    assert set(results) == copies and all(r["error"] is None for r in results.values())
    trash = _trash(tmp_path)
    assert set(trash) == copies
    for original, trashed in trash.items():
        assert results[original]["trashed_to"] == str(trashed)
        assert trashed.read_bytes() == before[original][0]
    after = _tree(lib)
    assert after == {p: v for p, v in before.items() if p not in copies}
    lines = [json.loads(line) for line in (tmp_path / "data" / "dedupe-log.jsonl").read_text().splitlines()]
    assert sorted(line["path"] for line in lines) == sorted(copies)
    for line in lines:
        assert line["trashed_to"] == str(trash[line["path"]])
        assert line["kept"] == [copy_of[line["path"]]]
        assert (line["kind"], line["score"]) == ("exact", 1.0) and line["time"]

    # The index no longer has them: no group, no search result, no catalog row, no vector.
    assert _json(_cli(tmp_path, "duplicates", "--exact", "--json")) == {"groups": []}
    found = _json(_cli(tmp_path, "search", "--like", str(a), "-k", "10", "--json"))
    assert {r["path"] for r in found["results"]} == set(after) - {str(a)}
    with open_ctx(model=False) as ctx:
        assert all(ctx.catalog.get(p) is None for p in copies)
        assert ctx.vectors.count() == len(after)


def test_each_keep_rule_keeps_its_file_and_ties_go_to_the_first_path(
    tmp_path: Path, open_ctx: OpenContext
) -> None:
    lib = tmp_path / "lib"
    scene = photo(5, (96, 72))
    original = lib / "original.jpg"
    original.parent.mkdir(parents=True)
    original.write_bytes(jpeg_bytes(scene, quality=95))
    copy = Path(_copy(original, lib / "sub" / "original-copy.jpg"))  # same pixels and bytes: a tie
    resized = lib / "sub" / "resized.jpg"
    resized.write_bytes(jpeg_bytes(scene.resize((72, 54)), quality=95))
    q = lib / "q.jpg"  # the same pixels as the original, fewer bytes
    q.write_bytes(jpeg_bytes(scene, quality=60))
    for age, path in enumerate([copy, original, resized, q]):
        os.utime(path, ns=(1_600_000_000_000_000_000 + age * 10**12,) * 2)
    _index(open_ctx, lib)
    expected = {
        "largest": original,  # 96x72 like the copy and q; more bytes than q; before the copy by path
        "smallest": resized,
        "oldest": copy,
        "newest": q,
        "shortest-path": q,
    }
    assert set(expected) == set(KEEP_RULES)
    members = {str(p) for p in (original, copy, resized, q)}
    with open_ctx(model=False) as ctx:
        for rule, keeper in expected.items():
            plan = local_plan(ctx, rule, [], THRESHOLD, exact=False)
            [group] = plan.groups
            assert group.kind == "similar" and group.skipped is None
            assert group.kept_paths == [str(keeper)], rule
            assert set(group.discarded_paths) == members - {str(keeper)}, rule


def test_protected_folders_from_the_flag_and_the_config_keep_every_protected_member(
    tmp_path: Path, open_ctx: OpenContext
) -> None:
    pictures = tmp_path / "home" / "Pictures"
    original = write_photo(pictures / "Originals" / "o.jpg", 1, size=(64, 48))
    protected = {str(original), _copy(original, pictures / "Originals" / "o2.jpg")}
    protected.add(_copy(original, pictures / "Other" / "o.jpg"))
    others = {_copy(original, pictures / "o.jpg"), _copy(original, pictures / "Downloads" / "o.jpg")}
    # A group wholly inside a protected folder is left alone.
    alone = write_photo(pictures / "Originals" / "x.jpg", 2, size=(64, 48))
    alone_copy = _copy(alone, pictures / "Originals" / "old" / "x.jpg")
    _index(open_ctx, pictures)
    config = tmp_path / "data" / "cfg" / "imgwatch" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('protect = ["~/Pictures/Originals"]\n')

    args = ("--keep", "shortest-path", "--exact", "--protect", str(pictures / "Other"), "--yes", "--json")
    done = _json(_cli(tmp_path, "dedupe", *args))
    assert _planned(done) == (protected, others)  # the rule's own pick, Pictures/o.jpg, goes
    [skipped] = [g for g in done["groups"] if g["skipped"] is not None]
    assert {d["path"] for d in skipped["kept"]} == {str(alone), alone_copy}
    assert "protected" in skipped["skipped"] and skipped["results"] == []
    assert set(_trash(tmp_path)) == others
    assert all(Path(p).exists() for p in protected | {str(alone), alone_copy})
    assert not any(Path(p).exists() for p in others)
    assert sum(len(g["results"]) for g in done["groups"]) == len(others)


def test_protect_setting_is_absolute_with_tilde_expanded(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text('protect = ["~/Originals", "kept/../Scans"]\n')
    environ = {"HOME": str(tmp_path / "home")}
    settings = load_settings({}, config_file=config, environ=environ)
    assert settings.protect == (str(tmp_path / "home" / "Originals"), str(tmp_path / "etc" / "Scans"))
    with pytest.raises(ValidationError, match="absolute"):
        Settings(protect=("Originals",))


def test_discarding_never_moves_a_kept_or_protected_file_whatever_the_caller_asks(
    tmp_path: Path, open_ctx: OpenContext, trash_home: Path
) -> None:
    """What the daemon's POST /discard and the search page call: its own checks, not the plan's."""
    lib = tmp_path / "lib"
    keep = write_photo(lib / "k.jpg", 1, size=(64, 48))
    shielded = _copy(keep, lib / "Originals" / "k.jpg")
    plain = _copy(keep, lib / "Downloads" / "k.jpg")
    _index(open_ctx, lib)
    log = tmp_path / "data" / "dedupe-log.jsonl"
    with open_ctx(model=False) as ctx:
        results = discard_keeping(
            [str(keep), shielded, plain],
            [str(keep)],
            ctx,
            log,
            {"kept": [str(keep)]},
            protect=[str(lib / "Originals")],
        )
        errors = {d.path: d.error for d in results}
        assert errors[str(keep)] is not None and "keep" in errors[str(keep)]
        assert errors[shielded] is not None and "protected" in errors[shielded]
        assert errors[plain] is None
        assert ctx.catalog.get(plain) is None and ctx.catalog.get(shielded) is not None
    assert set(_trash(tmp_path)) == {plain} and (trash_home / "files" / "k.jpg").exists()
    assert keep.exists() and Path(shielded).exists()
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == [plain]


def test_moves_at_once_of_files_with_one_name_lose_none_and_say_where_each_went(
    tmp_path: Path, trash_home: Path
) -> None:
    """The page and ``dedupe --yes`` through the daemon move files in several threads at once, and
    camera names repeat across folders: no trashed file may replace another in the trash (send2trash
    alone checks a name is free, then renames onto it)."""
    batches = [
        [
            write_bytes(tmp_path / "lib" / f"t{t}" / f"d{n}" / "IMG_0001.jpg", f"{t}-{n}".encode())
            for n in range(60)
        ]
        for t in range(8)
    ]
    results: list[tuple[str, str | None]] = []

    def move(batch: list[str]) -> None:
        results.extend((path, move_to_trash(path)) for path in batch)

    threads = [threading.Thread(target=move, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    going = {p for batch in batches for p in batch}
    assert {path for path, _ in results} == going and not any(Path(p).exists() for p in going)
    # Every file is in the trash, each where it was said to be, with its own bytes.
    assert len(list((trash_home / "files").iterdir())) == len(going)
    assert {original: str(there) for original, there in _trash(tmp_path).items()} == dict(results)
    for path, there in results:
        t, n = Path(path).parts[-3][1:], Path(path).parts[-2][1:]
        assert Path(str(there)).read_bytes() == f"{t}-{n}".encode()


def write_bytes(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_a_chain_of_look_alikes_loses_only_the_files_that_look_like_the_one_kept(
    tmp_path: Path, open_ctx: OpenContext
) -> None:
    """Look-alike groups are chains (A like B, B like C): C may look less like A than the bar. With
    the stored vectors, a file goes only when its own score to a kept file reaches the threshold."""
    lib = tmp_path / "lib"
    base = photo(7, (160, 120))
    (lib / "a").mkdir(parents=True)
    (lib / "a" / "big.jpg").write_bytes(jpeg_bytes(base.resize((320, 240))))
    (lib / "a" / "small.jpg").write_bytes(jpeg_bytes(base))
    (lib / "a" / "other.jpg").write_bytes(jpeg_bytes(base.crop((16, 12, 160, 120)).resize((160, 120))))
    _index(open_ctx, lib)
    big, small, other = (str(lib / "a" / n) for n in ("big.jpg", "small.jpg", "other.jpg"))
    group = DuplicateGroup(sorted([big, small, other]), 1.0, "similar")
    with open_ctx(model=False) as ctx:
        score = stored_scores(ctx, 1.0).score
        near_small, near_other = score(small, [big]), score(other, [big])
        assert near_small is not None and near_other is not None and near_small > near_other
        bar = (near_small + near_other) / 2  # the chain split between them
        split = plan_group(group, {m.path: m for m in _members(ctx, [big, small, other])}, {}, "largest",
                           Near(bar, score))  # fmt: skip
        whole = plan_group(group, {m.path: m for m in _members(ctx, [big, small, other])}, {}, "largest",
                           Near(near_other, score))  # fmt: skip
    assert [d.path for d in split.kept] == [big, other] and [d.path for d in split.discarded] == [small]
    assert "not itself a look-alike" in split.kept[1].reason
    assert sorted(d.path for d in whole.discarded) == sorted([small, other])  # both within this bar


def _members(ctx: Any, paths: list[str]) -> list[Member]:
    records = [ctx.catalog.get(p) for p in paths]
    return [Member(r.path, r.size, r.mtime_ns, None, r.content_hash) for r in records]


def test_a_kept_file_under_another_name_is_never_moved(
    tmp_path: Path, open_ctx: OpenContext, trash_home: Path
) -> None:
    """A hard link (like a bind mount, or two spellings on a case-insensitive disk) is the kept file
    itself under another path: moving it would move the file kept."""
    lib = tmp_path / "lib"
    keep = write_photo(lib / "a" / "k.jpg", 4, size=(32, 24))
    (lib / "b").mkdir()
    os.link(keep, lib / "b" / "k.jpg")
    plain = _copy(keep, lib / "c" / "k.jpg")
    _index(open_ctx, lib)
    with open_ctx(model=False) as ctx:
        results = discard_keeping(
            [str(lib / "b" / "k.jpg"), plain], [str(keep)], ctx, tmp_path / "data" / "log.jsonl"
        )
    errors = {d.path: d.error for d in results}
    assert errors[str(lib / "b" / "k.jpg")] == "kept: it is a file to keep, under another name"
    assert errors[plain] is None
    assert keep.exists() and (lib / "b" / "k.jpg").exists() and set(_trash(tmp_path)) == {plain}


def test_a_verdict_recorded_since_the_groups_were_found_leaves_the_group_alone(
    tmp_path: Path, open_ctx: OpenContext, trash_home: Path
) -> None:
    lib = tmp_path / "lib"
    scene = photo(4, (96, 72))
    a, b = lib / "a.jpg", lib / "b.jpg"
    lib.mkdir()
    a.write_bytes(jpeg_bytes(scene, quality=95))
    b.write_bytes(jpeg_bytes(scene, quality=50))
    _index(open_ctx, lib)
    with open_ctx(model=False) as ctx:
        groups = find_duplicates(ctx, threshold=THRESHOLD)
        assert [set(g.paths) for g in groups] == [{str(a), str(b)}]
        mark_distinct(ctx.catalog, [str(a), str(b)], "two takes")
        # The groups found now respect the verdict; the plan for the groups found before does too.
        assert find_duplicates(ctx, threshold=THRESHOLD) == []
        plan = plan_from_index(groups, duplicate_catalog(ctx.catalog), "largest", [], os.path.realpath)
        [group] = plan.groups
        assert group.skipped is not None and "verdict" in group.skipped
        assert group.discarded == [] and plan.to_discard == []
        assert apply_plan(plan, ctx, tmp_path / "log.jsonl", []) == []
    assert a.exists() and b.exists() and not (tmp_path / "xdg").exists()


def test_files_that_cannot_go_are_reported_and_the_others_still_go(
    tmp_path: Path, open_ctx: OpenContext
) -> None:
    if os.geteuid() == 0 and not _UNPRIVILEGED:
        reason = "needs setpriv (util-linux) to drop root's override of file permissions"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but this test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    lib = tmp_path / "lib"
    keep = write_photo(lib / "k.jpg", 1, size=(64, 48))
    fine = _copy(keep, lib / "copy-fine.jpg")
    changed = _copy(keep, lib / "copy-changed.jpg")
    readonly = _copy(keep, lib / "copy-readonly.jpg")
    gone = _copy(keep, lib / "copy-gone.jpg")
    lost = write_photo(lib / "v.jpg", 2, size=(64, 48))
    orphan = _copy(lost, lib / "v-copy.jpg")
    target = write_photo(lib / "w-target.jpg", 3, size=(64, 48))
    (lib / "w.jpg").symlink_to(target.name)  # indexed as a file of its own, and kept (shortest path)
    _index(open_ctx, lib)
    os.utime(changed, ns=(1_600_000_000_000_000_000,) * 2)  # touched since it was indexed
    os.chmod(readonly, 0o444)  # the spec's trash refuses a file the user may not write
    os.unlink(gone)  # removed between the index and the clean-up
    lost.unlink()  # the file its group keeps is gone: its copy must stay

    done = _json(
        _cli(
            tmp_path, "dedupe", "--keep", "shortest-path", "--exact", "--yes", "--json", prefix=_UNPRIVILEGED
        ),
        status=3,
    )
    results = {r["path"]: r for g in done["groups"] for r in g["results"]}
    assert set(results) == {fine, changed, readonly, gone, orphan, str(target)}
    assert results[fine]["error"] is None
    assert "changed since it was indexed" in results[changed]["error"]
    assert "cannot be moved to the trash" in results[readonly]["error"]
    assert "vanished" in results[gone]["error"]
    assert "kept instead" in results[orphan]["error"] and str(lost) in results[orphan]["error"]
    assert "symbolic link" in results[str(target)]["error"]
    assert set(_trash(tmp_path)) == {fine}
    assert all(Path(p).exists() for p in (keep, changed, readonly, orphan, target))
    with open_ctx(model=False) as ctx:
        assert ctx.catalog.get(fine) is None
        assert all(ctx.catalog.get(p) is not None for p in (changed, readonly, orphan, str(target)))


def test_through_a_running_daemon_its_index_drops_the_files_at_once(
    tmp_path: Path, daemon_factory: Any
) -> None:
    lib = tmp_path / "lib"
    keep = write_photo(lib / "k.jpg", 1, size=(64, 48))
    other = write_photo(lib / "other.jpg", 2, size=(64, 48))
    copies = {_copy(keep, lib / "copies" / "k.jpg"), _copy(keep, lib / "copies" / "k2.jpg")}
    # Polled once an hour: the watcher cannot be what drops the trashed files from the index.
    daemon = daemon_factory(lib, extra=("--poll", "--poll-interval", "3600"), env=_homes(tmp_path))
    daemon.idle()
    client = daemon.client
    assert [set(g["paths"]) for g in client.duplicates(THRESHOLD, exact=True)["groups"]] == [
        {str(keep), *copies}
    ]

    # The plan as people read it: what stays, what would go, and that nothing changed.
    plan = _cli(tmp_path, "dedupe", "--keep", "shortest-path", "--exact")
    assert plan.returncode == 0, plan.stderr.decode(errors="replace")
    lines = plan.stdout.decode().splitlines()
    assert f"  keep     {keep}  (shortest-path: the shortest path)" in lines
    assert {line.split()[1] for line in lines if line.startswith("  discard  ")} == copies
    assert lines[-1].startswith("2 file(s) to move to the trash; nothing changed")
    assert all(Path(p).exists() for p in copies) and client.duplicates(THRESHOLD, exact=True)["groups"]
    done = _json(_cli(tmp_path, "dedupe", "--keep", "shortest-path", "--exact", "--yes", "--json"))
    # Right after the command: the daemon's index has forgotten them.
    assert client.duplicates(THRESHOLD, exact=True)["groups"] == []
    [result] = client.search_like([str(keep)], 10)
    assert [m["path"] for m in result["results"]] == [str(other)]
    moved = {r["path"]: r["trashed_to"] for g in done["groups"] for r in g["results"]}
    assert moved == {p: str(t) for p, t in _trash(tmp_path).items()} and set(moved) == copies
    lines = (tmp_path / "data" / "dedupe-log.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(copies)


def test_on_another_filesystem_a_file_goes_to_its_volumes_trash_or_stays_when_it_has_none(
    tmp_path: Path,
) -> None:
    """Two real tmpfs volumes in a private mount namespace: on one, the copy goes to the volume's
    own ``.Trash-$UID`` (the spec's trash for a volume that is not the home's); on the other,
    ``.Trash-$UID`` is a plain file, so no trash can be made there: that copy stays, reported."""
    with mount_namespace() as space:
        usable, unusable = tmp_path / "usable", tmp_path / "unusable"
        space.sh(
            f"for v in {usable} {unusable}; do mkdir -p $v; mount -t tmpfs -o size=16m imgwatch-test $v; done"
        )
        keep = write_photo(tmp_path / "lib" / "k.jpg", 1, size=(64, 48))
        for volume in (usable, unusable):
            _copy(keep, space.path(volume / "copy.jpg"))
        trash_name = f".Trash-{os.getuid()}"
        space.path(unusable / trash_name).write_text("not a directory\n")
        out = tmp_path / "out.json"
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = cli_env(tmp_path / "data") | _homes(tmp_path) | {"PYTHONPATH": pythonpath}
        passed = {k: v for k, v in env.items() if k.startswith(("IMGWATCH_", "XDG_", "HOME", "PYTHONPATH"))}
        cli = (
            f"env {' '.join(f'{k}={shlex.quote(v)}' for k, v in passed.items())} {sys.executable} -m imgwatch"
        )
        roots = f"{tmp_path / 'lib'} {usable} {unusable}"
        space.sh(
            f"cd {REPO}; {cli} index {roots} >/dev/null; "
            f"{cli} dedupe --keep shortest-path --exact --yes --json > {out} || echo $? > {out}.status"
        )
        assert Path(f"{out}.status").read_text().strip() == "3"
        results = {r["path"]: r for g in json.loads(out.read_text())["groups"] for r in g["results"]}
        assert set(results) == {str(usable / "copy.jpg"), str(unusable / "copy.jpg")}
        moved = results[str(usable / "copy.jpg")]
        assert moved["error"] is None
        assert moved["trashed_to"] == str(usable / trash_name / "files" / "copy.jpg")
        assert space.path(Path(moved["trashed_to"])).read_bytes() == keep.read_bytes()
        info = space.path(usable / trash_name / "info" / "copy.jpg.trashinfo").read_text()
        assert "Path=copy.jpg\n" in info  # relative to the volume's top, as the spec says
        assert "cannot be moved to the trash" in results[str(unusable / "copy.jpg")]["error"]
        assert space.path(unusable / "copy.jpg").exists() and keep.exists()
        assert not space.path(usable / "copy.jpg").exists()
        assert not (tmp_path / "xdg" / "Trash").exists()  # nothing crossed into the home trash


_MEMBER = st.tuples(
    st.integers(1, 4),  # size
    st.integers(0, 3),  # mtime
    st.one_of(st.none(), st.integers(1, 3)),  # pixels (None: unreadable header)
    st.booleans(),  # inside a protected folder
    st.sampled_from(["h1", "h2", None]),  # content hash
)


@settings(max_examples=150, deadline=None)
@given(
    facts=st.lists(_MEMBER, min_size=2, max_size=6),
    names=st.permutations(["/p/a.jpg", "/p/b.jpg", "/p/cc.jpg", "/p/x/d.jpg", "/p/é.jpg", "/q/f.jpg"]),
    rule=st.sampled_from(KEEP_RULES),
    verdict=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_any_plan_keeps_one_file_and_every_protected_one_and_does_not_depend_on_the_order(
    facts: list[tuple[int, int, int | None, bool, str | None]],
    names: list[str],
    rule: str,
    verdict: bool,
    order: Any,
) -> None:
    """The planner's safety rules on any group (pure: the facts are given, nothing is read)."""
    members = {
        path: Member(path, size, mtime, pixels, content, "/p" if protected else None)
        for path, (size, mtime, pixels, protected, content) in zip(names, facts, strict=False)
    }
    paths = list(members)
    apart = {"h1": {"h2"}, "h2": {"h1"}} if verdict else {}
    plan = plan_group(DuplicateGroup(paths, 0.99, "similar"), members, apart, rule)
    shuffled = paths[:]
    order.shuffle(shuffled)
    assert plan_group(DuplicateGroup(shuffled, 0.99, "similar"), members, apart, rule) == plan
    hashes = {m.content_hash for m in members.values()}
    if verdict and {"h1", "h2"} <= hashes:
        assert plan.skipped is not None and "verdict" in plan.skipped and not plan.discarded
        return
    kept, discarded = set(plan.kept_paths), set(plan.discarded_paths)
    assert kept and not kept & discarded and kept | discarded == set(paths)
    protected = {p for p, m in members.items() if m.protected_by}
    assert kept == (protected or kept) and len(kept) == (len(protected) or 1)
    assert (plan.skipped is not None) == (protected == set(paths))
