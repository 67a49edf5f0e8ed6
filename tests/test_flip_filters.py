"""``search --flip`` finds mirrored copies, ``--crops`` cropped ones; ``--under`` and ``--since/--until``
still give k results.

Real files, the real catalog and Milvus Lite in tmp_path, VGG16 with random:0 weights. The filter
tests share one indexed library (indexing is the expensive part), built so that many files score
better than every file the filter admits: the first round of hits the store gives holds none of
them, so only asking again (and filtering by the catalog) can answer with k files.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgwatch.check import DEFAULT_THRESHOLD, check_images, check_reply
from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.samples import photo
from imgwatch.search import (
    _SLACK,
    QueryResult,
    SearchFilter,
    SearchFilterError,
    search_images,
    search_like,
)
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.thumbnails import ThumbnailNotFoundError
from imgwatch.web import create_app
from imgwatch.web.local import LocalSurface
from imgwatch.web.page import PageSurface, SearchImage, SearchPageBackend, SearchPageConfig
from imgwatch.web.server import HttpServer, bind_unix
from tests.conftest import WEIGHTS, index, jpeg_bytes, serve
from tests.harness import RunningDaemon, imgwatch_cli

# One worker for the module: its module-scoped daemon (or model) is then started once.
pytestmark = pytest.mark.xdist_group("flip-filters")

SIZE = (64, 48)
QUERY_SEED = 4100
"""The query photo of the filter tests; its near copies are the files the filters must keep out."""
KEPT_SEEDS = (4200, 4201, 4202, 4203)
K = 3
SINCE, UNTIL = "2024-06-01", "2024-09-01"
FLIP_SEED = 18
"""A photo whose mirrored copy plain search does not rank first among the distractors (random:0)."""
FLIP_DISTRACTORS = tuple(range(1, 12))
FLIP_SIZE = (160, 120)
CROP_SEEDS = (300, 301, 302, 304)
"""Photos whose cropped copies the crop tests index; plain search ranks some of them first, not all."""
RESIZED_SEED = 320
"""A photo whose copy in the crop library is only resized: ``--crops`` must still find it first."""
CROP_DISTRACTORS = (900, 901, 902, 903)
CROP_SIZE = (96, 72)


def _ns(text: str) -> int:
    """A local date-time as the catalog stores mtimes (what --since/--until mean without an offset)."""
    return round(datetime.fromisoformat(text).astimezone().timestamp() * 1e6) * 1000


def _write(path: Path, data: bytes, mtime: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(_ns(mtime), _ns(mtime)))
    return path


def _near_copy(seed: int, variant: int) -> bytes:
    """The photo with a little noise of its own, re-encoded: far closer to it than any other photo."""
    pixels = np.asarray(photo(seed, SIZE), dtype=np.float32)
    noise = np.random.default_rng(variant).normal(0, 3, size=pixels.shape)
    return jpeg_bytes(Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)), quality=70 + variant)


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, extractor: VGG16Extractor
) -> Iterator[tuple[Path, Context]]:
    """``keep/`` holds four distinct photos (the first at exactly --since, the last at exactly
    --until); 12 near copies of the query photo, one more than the first round of hits holds, score
    above them all: 6 in ``keep-not/`` (a sibling whose name starts like ``keep``) dated before
    --since, 3 in ``early/`` a second before --since, 3 in ``late/`` at exactly --until."""
    root = tmp_path_factory.mktemp("flip-filters") / "library"
    kept_dates = (f"{SINCE}T00:00:00", "2024-07-01T12:00:00", "2024-08-31T23:59:59", f"{UNTIL}T00:00:00")
    for seed, when in zip(KEPT_SEEDS, kept_dates, strict=True):
        _write(root / "keep" / f"kept{seed}.jpg", jpeg_bytes(photo(seed, SIZE)), when)
    for variant in range(6):
        _write(
            root / "keep-not" / f"near{variant}.jpg", _near_copy(QUERY_SEED, variant), "2024-05-01T08:00:00"
        )
    for variant in range(6, 9):
        _write(root / "early" / f"near{variant}.jpg", _near_copy(QUERY_SEED, variant), "2024-05-31T23:59:59")
    for variant in range(9, 12):
        _write(root / "late" / f"near{variant}.jpg", _near_copy(QUERY_SEED, variant), f"{UNTIL}T00:00:00")
    settings = Settings(data_dir=root.parent / "data", weights=WEIGHTS, batch_size=8)
    with open_context(settings, command="test", extractor=extractor) as ctx:
        assert index(ctx, root).failed == 0
        yield root, ctx


def _query() -> list[tuple[str, bytes | str]]:
    return [("query", jpeg_bytes(photo(QUERY_SEED, SIZE)))]


def _truth(ctx: Context, root: Path, admits: SearchFilter) -> list[str]:
    """Every indexed file the filter admits, best first, by exact cosine (no store search involved),
    judged by the file's own path and its mtime on disk."""
    vector = ctx.extractor.embed(jpeg_bytes(photo(QUERY_SEED, SIZE)))
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    records = {p: ctx.catalog.get(p) for p in paths}
    stored = ctx.vectors.get_vectors({r.id for r in records.values() if r is not None})
    scores = {p: float(vector @ stored[r.id]) for p, r in records.items() if r is not None}
    passing = [p for p in scores if admits.admits(p, os.stat(p).st_mtime_ns)]
    return sorted(passing, key=lambda p: scores[p], reverse=True)


def _first_round(ctx: Context) -> list[str]:
    """What an unfiltered search for k + slack finds: the hits one store round gives."""
    [result] = search_images(_query(), ctx, k=K + _SLACK)
    return [m.path for m in result.matches]


def test_under_gives_k_results_from_inside_when_better_ones_are_outside(
    library: tuple[Path, Context],
) -> None:
    root, ctx = library
    keep = str(root / "keep")
    assert not [p for p in _first_round(ctx) if p.startswith(keep + os.sep)]  # only more rounds find them
    where = SearchFilter.parse([keep])
    [result] = search_images(_query(), ctx, k=K, where=where)
    found = [m.path for m in result.matches]
    assert found == _truth(ctx, root, where)[:K]
    assert len(found) == K and all(os.path.dirname(p) == keep for p in found)  # not keep-not/
    # Two directories: inside either one.
    both = SearchFilter.parse([keep, str(root / "late")])
    [result] = search_images(_query(), ctx, k=8, where=both)
    assert [m.path for m in result.matches] == _truth(ctx, root, both)[:8]
    assert {os.path.basename(os.path.dirname(m.path)) for m in result.matches} == {"keep", "late"}


def test_since_until_give_k_results_in_range_inclusive_since_exclusive_until(
    library: tuple[Path, Context],
) -> None:
    root, ctx = library
    where = SearchFilter.parse(since=SINCE, until=UNTIL)
    [result] = search_images(_query(), ctx, k=K, where=where)
    found = [m.path for m in result.matches]
    # Exactly the three kept photos from SINCE (inclusive) to a second before UNTIL; the fourth, the
    # late/ copies (at UNTIL, exclusive) and every earlier copy are out.
    assert sorted(found) == [str(root / "keep" / f"kept{s}.jpg") for s in KEPT_SEEDS[:3]]
    assert found == _truth(ctx, root, where)
    # Asking for more than pass: all that pass, no more (the store was asked up to its whole size).
    [result] = search_images(_query(), ctx, k=10, where=where)
    assert [m.path for m in result.matches] == found
    # Combined with --under, and for "more like this" (its own entry left out).
    like = str(root / "keep" / f"kept{KEPT_SEEDS[0]}.jpg")
    both = SearchFilter.parse([str(root / "keep")], since="2024-07-01", until=UNTIL)
    [result] = search_like([like], ctx, k=K, where=both)
    assert sorted(m.path for m in result.matches) == [
        str(root / "keep" / f"kept{s}.jpg") for s in KEPT_SEEDS[1:3]
    ]


def test_bad_dates_and_empty_ranges_are_refused_with_the_option_named() -> None:
    with pytest.raises(SearchFilterError, match=r"--since '2024-13-01': not an ISO date"):
        SearchFilter.parse(since="2024-13-01")
    with pytest.raises(SearchFilterError, match=r"--until 'last tuesday': not an ISO date"):
        SearchFilter.parse(until="last tuesday")
    with pytest.raises(SearchFilterError, match=r"--until '2024-01-01': is not after --since 2024-02-01"):
        SearchFilter.parse(since="2024-02-01", until="2024-01-01")
    # With an offset the instant is absolute: the same moment however it is written.
    assert SearchFilter.parse(since="2024-06-01T02:00+02:00") == SearchFilter.parse(since="2024-06-01T00:00Z")


def test_the_control_socket_carries_flip_and_filters(library: tuple[Path, Context], tmp_path: Path) -> None:
    """Over the real socket and client: the daemon's answer is the in-process one; a daemon whose
    surface cannot honour the options refuses them rather than answering a plain search."""
    root, ctx = library

    def results(found: list[QueryResult]) -> dict[str, object]:
        return {"results": [{"query": r.query, "results": [m.as_dict() for m in r.matches]} for r in found]}

    surface = LocalSurface(
        status=dict,
        search=lambda q, k: results(search_images(q, ctx, k=k)),
        search_like=lambda p, k: results(search_like(p, ctx, k=k)),
        duplicates=lambda _t: {},
        index=lambda _r: {},
        invoke=lambda _p: {},
        run_job=lambda _j: {},
        forget_root=lambda _r: {},
        search_with=lambda q, k, flip, crops, where: results(
            search_images(q, ctx, k=k, flip=flip, crops=crops, where=where)
        ),
        search_like_with=lambda p, k, where: results(search_like(p, ctx, k=k, where=where)),
        check=lambda q, t: check_reply(check_images(q, ctx, threshold=t)),
        check_cropped=lambda q, t, where: check_reply(
            check_images(q, ctx, threshold=t, where=where, crops=True)
        ),
    )
    # Its own BlockingWork: a stopped server's is not used again.
    kept = {name: value for name, value in surface.__dict__.items() if name != "work"}
    plain = LocalSurface(**{**kept, "search_with": None, "search_like_with": None, "check_cropped": None})
    where = SearchFilter.parse([str(root / "keep")], since=SINCE, until=UNTIL)
    for number, (served, options) in enumerate([(surface, True), (plain, False)]):
        data_dir = tmp_path / f"data{number}"
        data_dir.mkdir()
        server = HttpServer(
            create_app(local=served), bind_unix(data_dir / "imgwatch.sock"), "imgwatch-test-socket"
        )
        server.start()
        try:
            client = DaemonClient(data_dir)
            # Crops need query images: refused with `like` before anything runs.
            like = {"k": K, "like": [str(root / "keep" / "kept4200.jpg")], "crops": True}
            with pytest.raises(DaemonUnavailableError, match="crops needs query images"):
                client.request("POST", "/search", like)
            if not options:
                for option in ("flip", "crops"):
                    with pytest.raises(
                        DaemonUnavailableError, match="does not search mirrored images or crops"
                    ):
                        client.search(_query(), K, **{option: True})
                with pytest.raises(DaemonUnavailableError, match="does not filter searches"):
                    client.search_like([str(root / "keep" / "kept4200.jpg")], K, where=where)
                with pytest.raises(DaemonUnavailableError, match="does not check with crops"):
                    client.check(_query(), DEFAULT_THRESHOLD, crops=True)
                continue
            [checked] = client.check(_query(), DEFAULT_THRESHOLD, crops=True)
            [expected_check] = check_images(_query(), ctx, threshold=DEFAULT_THRESHOLD, crops=True)
            assert checked == expected_check.as_dict() and checked["match"] is not None
            [answer] = client.search(_query(), K, flip=True, where=where)
            [expected] = search_images(_query(), ctx, k=K, flip=True, where=where)
            assert [(r["path"], r["score"]) for r in answer["results"]] == [
                (m.path, m.score) for m in expected.matches
            ]
            assert len(answer["results"]) == K
        finally:
            server.stop()


def test_the_search_page_searches_with_the_mirror_too_when_asked(library: tuple[Path, Context]) -> None:
    """The page's toggle sends flip=true; a backend that cannot flip refuses it (400)."""
    _, ctx = library

    def searcher(flip: bool) -> SearchImage:
        return lambda data, k: search_images([("upload", data)], ctx, k=k, flip=flip)[0]

    def thumbnail(ref: int | str) -> bytes:
        raise ThumbnailNotFoundError(str(ref))

    backends = {
        "both": SearchPageBackend(
            searcher(False),
            lambda p, _k: QueryResult(p, []),
            thumbnail,
            lambda _i: None,
            search_image_flipped=searcher(True),
        ),
        "plain": SearchPageBackend(
            searcher(False), lambda p, _k: QueryResult(p, []), thumbnail, lambda _i: None
        ),
    }
    [(_, data)] = _query()
    [flipped] = search_images(_query(), ctx, k=5, flip=True)
    for name, backend in backends.items():
        server = serve(create_app(page=PageSurface(SearchPageConfig("127.0.0.1", 0, None, 1 << 20), backend)))
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            connection.request("POST", "/api/search?k=5&flip=true", body=data)
            response = connection.getresponse()
            body = json.loads(response.read())
            # Neither backend searches with crops: refused, never answered as a plain search.
            connection.request("POST", "/api/search?k=5&crops=true", body=data)
            cropped = connection.getresponse()
            refusal = json.loads(cropped.read())
            connection.close()
        finally:
            server.stop()
        assert cropped.status == 400 and "crops" in refusal["error"]
        if name == "plain":
            assert response.status == 400 and "mirror" in body["error"]
            continue
        assert response.status == 200
        assert [(r["path"], r["score"]) for r in body["results"]] == [
            (m.path, m.score) for m in flipped.matches
        ]


def _mirror_library(root: Path) -> tuple[Path, Path]:
    """Distinct photos and the query photo's mirrored copy; returns (query, mirrored copy)."""
    for seed in FLIP_DISTRACTORS:
        (root / "photos").mkdir(parents=True, exist_ok=True)
        (root / "photos" / f"scene{seed}.jpg").write_bytes(jpeg_bytes(photo(seed, FLIP_SIZE)))
    copy = root / "photos" / "mirrored.jpg"
    copy.write_bytes(jpeg_bytes(ImageOps.mirror(photo(FLIP_SEED, FLIP_SIZE))))
    query = root / "query.jpg"
    query.write_bytes(jpeg_bytes(photo(FLIP_SEED, FLIP_SIZE)))
    return query, copy


@pytest.mark.slow
def test_cli_flip_ranks_the_mirrored_copy_first_where_plain_search_does_not(
    tmp_path: Path, extractor: VGG16Extractor
) -> None:
    query, copy = _mirror_library(tmp_path)
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, weights=WEIGHTS, batch_size=8)
    with open_context(settings, command="test", extractor=extractor) as ctx:
        index(ctx, tmp_path / "photos")
        [plain] = search_images([("q", query.read_bytes())], ctx, k=len(FLIP_DISTRACTORS) + 1)
    plain_rank = [m.path for m in plain.matches].index(str(copy)) + 1
    assert plain_rank > 1, f"seed {FLIP_SEED}: plain search already ranks its mirrored copy first"
    # The real command, the index it finds on disk, and the option as users type it.
    done = imgwatch_cli(data_dir, "search", str(query), "--flip", "-k", "3", "--json")
    assert done.returncode == 0, done.stderr.decode()
    [line] = done.stdout.decode().splitlines()
    found = json.loads(line)["results"]
    assert found[0]["path"] == str(copy)
    assert found[0]["score"] > plain.matches[0].score  # its mirror matches it better than anything did


@dataclass(frozen=True)
class CropLibrary:
    root: Path
    data_dir: Path
    cropped: dict[str, str]
    """Query file -> its cropped copy in the index."""
    resized: tuple[str, str]
    """A query and its resized (uncropped) copy."""
    plain_first: int
    """How many of :attr:`cropped`'s queries plain search ranks their own copy first for."""
    plain_checked: int
    """How many of them plain ``check`` (default threshold) answers with their own copy."""


def _cropped_copy(seed: int) -> bytes:
    """70-85 % of each side of the photo, at a random place (the seed's own)."""
    image = photo(seed, CROP_SIZE)
    rng = np.random.default_rng(seed)
    share = rng.uniform(0.70, 0.85)
    w, h = int(image.width * share), int(image.height * share)
    left, top = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return jpeg_bytes(image.crop((left, top, left + w, top + h)))


@pytest.fixture(scope="module")
def crop_library(tmp_path_factory: pytest.TempPathFactory, extractor: VGG16Extractor) -> CropLibrary:
    """Cropped copies of :data:`CROP_SEEDS`, a resized copy of :data:`RESIZED_SEED` and distinct
    photos, indexed (then closed, for the CLI); plain search's score measured in-process."""
    base = tmp_path_factory.mktemp("crops")
    root, queries = base / "library", base / "queries"
    root.mkdir()
    queries.mkdir()
    cropped = {}
    for seed in CROP_SEEDS:
        (root / f"crop{seed}.jpg").write_bytes(_cropped_copy(seed))
        (queries / f"query{seed}.jpg").write_bytes(jpeg_bytes(photo(seed, CROP_SIZE)))
        cropped[str(queries / f"query{seed}.jpg")] = str(root / f"crop{seed}.jpg")
    small = photo(RESIZED_SEED, CROP_SIZE).resize((58, 43), Image.Resampling.BICUBIC)
    (root / "resized.jpg").write_bytes(jpeg_bytes(small, quality=70))
    (queries / "whole.jpg").write_bytes(jpeg_bytes(photo(RESIZED_SEED, CROP_SIZE)))
    for seed in CROP_DISTRACTORS:
        (root / f"scene{seed}.jpg").write_bytes(jpeg_bytes(photo(seed, CROP_SIZE)))
    data_dir = base / "data"
    settings = Settings(data_dir=data_dir, weights=WEIGHTS, batch_size=8)
    with open_context(settings, command="test", extractor=extractor) as ctx:
        assert index(ctx, root).failed == 0
        given = [(q, Path(q).read_bytes()) for q in cropped]
        plain = search_images(given, ctx, k=1)
        checked = check_images(given, ctx, threshold=DEFAULT_THRESHOLD)
    plain_first = sum(r.matches[0].path == cropped[r.query] for r in plain)
    assert plain_first < len(CROP_SEEDS), "plain search already ranks every cropped copy first"
    plain_checked = sum(r.match is not None and r.match.path == cropped[r.query] for r in checked)
    return CropLibrary(
        root,
        data_dir,
        cropped,
        (str(queries / "whole.jpg"), str(root / "resized.jpg")),
        plain_first,
        plain_checked,
    )


def _search_with_crops(library: CropLibrary) -> dict[str, dict[str, object]]:
    """``imgwatch search --crops`` for every query of the library: its best match, by query."""
    queries = [*library.cropped, library.resized[0]]
    done = imgwatch_cli(library.data_dir, "search", *queries, "--crops", "-k", "1", "--json")
    assert done.returncode == 0, done.stderr.decode()
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return {line["query"]: line["results"][0] for line in lines}


def _assert_crops_gain(library: CropLibrary, best: dict[str, dict[str, object]]) -> None:
    crops_first = sum(best[query]["path"] == copy for query, copy in library.cropped.items())
    assert crops_first > library.plain_first, f"--crops: {crops_first}, plain: {library.plain_first}"
    query, copy = library.resized
    assert best[query]["path"] == copy  # an uncropped copy is not lost to the crops' scores


@pytest.mark.slow
def test_cli_crops_ranks_more_cropped_copies_first_than_plain_search(crop_library: CropLibrary) -> None:
    """No daemon: the command opens the index itself."""
    _assert_crops_gain(crop_library, _search_with_crops(crop_library))
    query = next(iter(crop_library.cropped.values()))
    done = imgwatch_cli(crop_library.data_dir, "search", "--like", query, "--crops")
    assert done.returncode != 0 and b"--crops needs query images" in done.stderr
    # check --crops: "do I already have this?" answers yes for more of the cropped copies.
    done = imgwatch_cli(crop_library.data_dir, "check", *crop_library.cropped, "--crops", "--json")
    assert done.returncode in (0, 1), done.stderr.decode()
    matches = {line["query"]: line["match"] for line in map(json.loads, done.stdout.decode().splitlines())}
    found = sum(m is not None and m["path"] == crop_library.cropped[q] for q, m in matches.items())
    assert found > crop_library.plain_checked, f"check --crops: {found}, plain: {crop_library.plain_checked}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_daemon_searches_with_crops_for_the_cli_and_the_page(
    crop_library: CropLibrary, daemon_factory: Callable[..., RunningDaemon]
) -> None:
    """A thin client's --crops reaches the daemon's warm model (six model runs a query there); the
    page's ``crops=true`` gives the same answer over real HTTP."""
    port = _free_port()
    daemon = daemon_factory(
        crop_library.root, data_dir=crop_library.data_dir, extra=("--search-page", f"127.0.0.1:{port}")
    )
    daemon.idle()
    before = daemon.model_runs()
    best = _search_with_crops(crop_library)
    assert daemon.model_runs() - before == 6 * len(best)
    _assert_crops_gain(crop_library, best)
    query = next(q for q, copy in crop_library.cropped.items() if best[q]["path"] == copy)
    # check --crops through the daemon too: more of the cropped copies are "already had".
    done = imgwatch_cli(crop_library.data_dir, "check", *crop_library.cropped, "--crops", "--json")
    assert done.returncode in (0, 1), done.stderr.decode()
    matches = {line["query"]: line["match"] for line in map(json.loads, done.stdout.decode().splitlines())}
    found_first = sum(m is not None and m["path"] == crop_library.cropped[q] for q, m in matches.items())
    assert found_first > crop_library.plain_checked
    page = urllib.parse.urlsplit(daemon.status()["search_page"])  # the address with the page's token
    token = urllib.parse.parse_qs(page.query)["token"][0]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(
            "POST",
            "/api/search?k=1&crops=true",
            body=Path(query).read_bytes(),
            headers={"Authorization": f"Bearer {token}"},
        )
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, body
    [found] = body["results"]
    assert found["path"] == best[query]["path"]
    assert found["score"] == pytest.approx(best[query]["score"], abs=1e-4)
    assert daemon.stop() == 0
