"""The search page's Duplicates view: paging, the histogram and the POST routes' protection over HTTP
on a real daemon, and a real headless chromium marking a group distinct and trashing copies."""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image, ImageFilter

from imgwatch.samples import photo
from imgwatch.web import create_app
from imgwatch.web.common import path_ref
from imgwatch.web.page import PageSurface, SearchPageBackend, SearchPageConfig
from imgwatch.web.review import ReviewBackend
from imgwatch.web.review_cache import ComputedCache
from imgwatch.web.review_math import separating_threshold
from tests.conftest import jpeg_bytes, serve
from tests.harness import RunningDaemon, imgwatch_cli, start_daemon, wait_until

# One daemon for the module: with `--dist loadgroup` xdist keeps these tests on one worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("review-page")]

# Seeded random weights score copies of a scene above 0.998 and different scenes below 0.95
# (measured on these 160x120 photos); 0.99 is the threshold the other duplicate tests use.
THRESHOLD = 0.99
#: A computation of 10 files takes well under a second; this only bounds a hung daemon.
READY_TIMEOUT = 120
BROWSER_TIMEOUT = 90


@dataclass
class Library:
    daemon: RunningDaemon
    port: int
    root: Path
    trash: Path
    """``$XDG_DATA_HOME/Trash/files`` of the daemon."""
    a: list[str]
    """Scene 1 and two look-alike copies: the largest group."""
    b: list[str]
    """Scene 2 and a blurred copy."""
    c: list[str]
    """Scene 3 and a byte-identical copy: an exact group."""
    singles: list[str]
    token: str
    """The data dir's page token, from the address `imgwatch status` gives."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=self.auth, timeout=60)

    def post(self, path: str, body: object, **headers: str) -> httpx.Response:
        headers = {"Content-Type": "application/json", **self.auth, **headers}
        return httpx.post(self.url + path, content=json.dumps(body).encode(), headers=headers, timeout=60)

    def ready(self, path: str, **params: Any) -> dict[str, Any]:
        """The answer once computed for the index as it is now (202 and stale ones are waited out)."""

        def fresh() -> dict[str, Any] | None:
            answer = self.get(path, **params)
            assert answer.status_code in (200, 202), answer.text
            body = dict(answer.json())
            return body if answer.status_code == 200 and not body["stale"] else None

        return dict(wait_until(fresh, timeout=READY_TIMEOUT, interval=0.2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    """One daemon for the module, on ten small photos: groups of 3, 2 (exact) and 2, three singles."""
    base = tmp_path_factory.mktemp("review")
    root = base / "photos"
    scenes = {seed: photo(seed, (160, 120)) for seed in range(1, 7)}
    one, two = scenes[1], scenes[2]
    a = [
        _write(root / "scene1.jpg", jpeg_bytes(one)),
        _write(root / "copies" / "scene1-q40.jpg", jpeg_bytes(one, quality=40)),
        _write(
            root / "copies" / "scene1-small.jpg", jpeg_bytes(one.resize((120, 90), Image.Resampling.LANCZOS))
        ),
    ]
    b = [
        # Softer than scene 1's copies (cosine ~0.995 against their ~0.999): the verdict on this
        # pair falls below the pairs confirmed as duplicates, so a threshold separates them.
        _write(root / "copies" / "scene2-soft.jpg", jpeg_bytes(two.filter(ImageFilter.GaussianBlur(1)))),
        _write(root / "scene2.jpg", jpeg_bytes(two)),
    ]
    c = [
        _write(root / "copies" / "scene3-copy.jpg", jpeg_bytes(scenes[3])),
        _write(root / "scene3.jpg", jpeg_bytes(scenes[3])),
    ]
    singles = [_write(root / f"scene{seed}.jpg", jpeg_bytes(scenes[seed])) for seed in (4, 5, 6)]
    xdg = base / "xdg"
    port = _free_port()
    daemon = start_daemon(
        base / "data", root, extra=("--search-page", f"127.0.0.1:{port}"), env={"XDG_DATA_HOME": str(xdg)}
    )
    try:
        daemon.idle()
        assert daemon.status()["vectors"] == 10
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(daemon.status()["search_page"]).query)["token"][0]
        trash = xdg / "Trash" / "files"
        yield Library(daemon, port, root, trash, sorted(a), sorted(b), sorted(c), singles, token)
    finally:
        assert daemon.stop() == 0


def _paths(group: dict[str, Any]) -> list[str]:
    return [m["path"] for m in group["members"]]


# ---- over HTTP, on the real daemon (these change nothing: the browser test below does) ----------


def test_groups_are_paged_by_the_server_largest_first(library: Library) -> None:
    # Nothing is computed for a request: the first one starts the pass in the background.
    first = library.get("/api/duplicates", threshold=THRESHOLD)
    assert first.status_code == 202 and first.json()["status"] == "computing", first.text
    assert first.headers["Retry-After"] == "1" and first.json()["groups"] == []
    whole = library.ready("/api/duplicates", threshold=THRESHOLD, limit=200)
    assert whole["total"] == 3 and whole["hidden"] == 0
    assert [_paths(g) for g in whole["groups"]] == [library.a, library.c, library.b]  # then exact first
    assert [g["kind"] for g in whole["groups"]] == ["similar", "exact", "similar"]
    for offset, expected in enumerate([library.a, library.c, library.b]):
        page = library.ready("/api/duplicates", threshold=THRESHOLD, offset=offset, limit=1)
        assert page["total"] == 3 and [_paths(g) for g in page["groups"]] == [expected]
    assert library.ready("/api/duplicates", threshold=THRESHOLD, offset=3)["groups"] == []
    two = library.ready("/api/duplicates", threshold=THRESHOLD, offset=1, limit=2)
    assert [_paths(g) for g in two["groups"]] == [library.c, library.b]
    # Each member carries what a user compares, and the thumbnail the page serves.
    first = whole["groups"][0]["members"][0]
    assert (first["width"], first["height"]) == (160, 120)
    assert first["size"] == os.path.getsize(first["path"]) and first["mtime"].endswith("+00:00")
    assert THRESHOLD <= first["score"] <= 1.0 + 1e-5
    thumb = httpx.get(library.url + first["thumb"], headers=library.auth, timeout=60)
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    # The exact view comes from the catalog alone; bad parameters are refused.
    assert [_paths(g) for g in library.ready("/api/duplicates", exact="true")["groups"]] == [library.c]
    for bad in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"threshold": 0}, {"threshold": 1.5}):
        assert library.get("/api/duplicates", **bad).status_code == 400, bad


def test_the_histogram_has_every_file_s_best_score_to_another(library: Library) -> None:
    """The page's neighbour scores agree with ``search --like`` (the query itself left out) for
    every indexed file, bin by bin."""
    histogram = library.ready("/api/duplicates/histogram", threshold=THRESHOLD)
    files = [*library.a, *library.b, *library.c, *library.singles]
    assert histogram["files"] == histogram["indexed"] == len(files)
    like = imgwatch_cli(library.daemon.data_dir, "search", "--like", *files, "-k", "1", "--json")
    assert like.returncode == 0, like.stderr
    best = [json.loads(line)["results"][0]["score"] for line in like.stdout.splitlines()]
    bins = histogram["bins"]
    assert bins[-1]["high"] == pytest.approx(1.0) and bins[0]["low"] <= min(best)
    assert all(x["high"] == pytest.approx(y["low"]) for x, y in itertools.pairwise(bins))
    expected = [
        sum(b["low"] <= s + 1e-6 and (s < b["high"] - 1e-6 or b is bins[-1]) for s in best) for b in bins
    ]
    assert [b["count"] for b in bins] == expected
    # Seven files have a copy: their best scores are above the threshold, the singles' below.
    assert sum(s >= THRESHOLD for s in best) == 7
    assert histogram["verdicts"] == [] and histogram["confirmed"] == [] and histogram["suggested"] is None


def test_the_post_routes_refuse_other_sites_and_non_json(library: Library) -> None:
    b = [path_ref(p) for p in library.b]
    route = "/api/duplicates/distinct"
    refused = [
        library.post(route, {"paths": b}, Origin="http://attacker.example"),
        library.post(route, {"paths": b}, Origin="null"),
        library.post(route, {"paths": b}, **{"Sec-Fetch-Site": "cross-site"}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403], [r.text for r in refused]
    # Whoever lacks the data dir's token is refused: another local user, a DNS-rebinding page.
    for headers in ({"Authorization": ""}, {"Authorization": "", "Host": "attacker.example"}):
        assert library.post(route, {"paths": b}, **headers).status_code == 401
    assert library.post("/api/duplicates/keep", {"keep": "x"}, Authorization="").status_code == 401
    # What a plain HTML form on another site can send: not JSON.
    form = httpx.post(
        library.url + route, content=b"paths=x", headers={"Content-Type": "text/plain", **library.auth}
    )
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    # Nothing was recorded by any of them.
    assert library.get("/api/duplicates/histogram").json()["verdicts"] == []

    # "keep this one" acts only on a group the view showed, and only inside the roots.
    a = [path_ref(p) for p in library.a]
    keep = {"keep": a[0], "threshold": THRESHOLD}
    assert (
        library.post("/api/duplicates/keep", keep | {"trash": [a[1]]}, Origin="http://x.example").status_code
        == 403
    )
    single = path_ref(library.singles[0])
    assert library.post("/api/duplicates/keep", keep | {"trash": [single]}).status_code == 409
    assert (
        library.post("/api/duplicates/keep", keep | {"trash": [path_ref("/etc/passwd")]}).status_code == 409
    )
    assert library.post("/api/duplicates/keep", keep | {"trash": [a[0]]}).status_code == 400
    assert all(os.path.exists(p) for p in [*library.a, *library.singles])

    # Same origin, JSON: "keep all" hides the group for this review, without a verdict.
    same = {"Origin": library.url, "Sec-Fetch-Site": "same-origin"}
    assert library.post("/api/duplicates/keep-all", {"paths": b}, **same).json() == {"hidden": 1}
    page = library.ready("/api/duplicates", threshold=THRESHOLD)
    assert page["total"] == 2 and page["hidden"] == 1 and library.b not in [_paths(g) for g in page["groups"]]
    assert library.post("/api/duplicates/unhide", {}).json() == {"hidden": 0}
    assert library.ready("/api/duplicates", threshold=THRESHOLD)["total"] == 3
    assert library.get("/api/duplicates/histogram").json()["verdicts"] == []


def test_the_routes_are_in_the_openapi_document(library: Library) -> None:
    document = library.get("/openapi.json").json()
    validate(document)
    paths = document["paths"]
    for route in ("/duplicates", "/api/duplicates", "/api/duplicates/histogram"):
        assert "get" in paths[route], route
    for route in ("distinct", "keep", "keep-all", "unhide"):
        assert "post" in paths[f"/api/duplicates/{route}"], route


def test_with_a_token_the_post_routes_require_it() -> None:
    """The HTTP layer alone, with a token set (as off loopback): the page's rule covers the new
    routes, before anything reaches the daemon (every backend call here fails the test)."""

    def never(*_args: Any) -> Any:
        raise AssertionError("the backend was reached")

    review = ReviewBackend(*([never] * 10))
    backend = SearchPageBackend(never, never, never, never, review=review)
    server = serve(create_app(page=PageSurface(SearchPageConfig("127.0.0.1", 0, "s3cret", 1 << 20), backend)))
    try:
        url = f"http://127.0.0.1:{server.port}"
        json_body = {"Content-Type": "application/json"}
        body = json.dumps({"paths": ["/a", "/b"]}).encode()
        for route in ("distinct", "keep-all", "unhide"):
            answer = httpx.post(f"{url}/api/duplicates/{route}", content=body, headers=json_body)
            assert answer.status_code == 401, route
        assert httpx.get(f"{url}/api/duplicates").status_code == 401
        assert httpx.get(f"{url}/duplicates").status_code == 401
        bearer = {"Authorization": "Bearer s3cret", **json_body}
        hidden = httpx.post(f"{url}/api/duplicates/keep-all", content=body, headers=bearer)
        assert hidden.status_code == 200 and hidden.json() == {"hidden": 1}
        assert httpx.get(f"{url}/duplicates", headers=bearer).status_code == 200
    finally:
        server.stop()


def test_the_suggested_threshold_separates_the_labelled_pairs() -> None:
    assert separating_threshold([], []) is None
    assert separating_threshold([0.9], [0.98]) == pytest.approx(0.94)
    # Only "not duplicates": the middle between the highest and 1.
    assert separating_threshold([0.9, 0.96], []) == pytest.approx(0.98)
    # Overlapping labels: the fewest misclassified pairs (one), in the widest such gap.
    assert separating_threshold([0.5, 0.97], [0.95, 0.99]) == pytest.approx(0.725)


def test_a_result_is_computed_once_per_generation_and_served_stale_while_the_next_is() -> None:
    """Real threads: paging never recomputes; a change of the index serves the old result, marked
    stale, until the new one is done; one computation at a time, the key asked for meanwhile next."""
    generation, calls, gate = [0], [], threading.Event()

    def compute(key: str) -> str:
        calls.append(key)
        assert gate.wait(60)
        return f"{key}@{len(calls)}"

    cache: ComputedCache[str, str] = ComputedCache(compute, lambda: generation[0], "test-cache")
    first = cache.get("k")
    assert first.done is None and first.running_since is not None
    gate.set()
    assert wait_until(lambda: cache.get("k").done).value == "k@1"
    for _ in range(5):
        assert not cache.get("k").stale
    assert calls == ["k"]

    generation[0] += 1
    gate.clear()
    stale = cache.get("k")
    assert stale.stale and stale.done is not None and stale.done.value == "k@1"
    wait_until(lambda: len(calls) == 2)
    assert cache.get("other").done is None
    assert calls == ["k", "k"]  # "other" waits for the running one
    gate.set()
    assert wait_until(lambda: (a := cache.get("k")).done and not a.stale and a).done.value == "k@2"
    assert wait_until(lambda: cache.get("other").done).value == "other@3"

    def broken(_key: str) -> str:
        raise OSError("the store went away")

    failing: ComputedCache[str, str] = ComputedCache(broken, lambda: 0, "test-cache")
    assert "the store went away" in wait_until(lambda: failing.get("k").error)
    assert failing.get("k").error is None  # reported once, then tried again


# ---- a real browser ------------------------------------------------------------------------------


@pytest.mark.browser
def test_in_a_browser_mark_distinct_and_trash_then_reload(browser: Any, library: Library) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, BROWSER_TIMEOUT)

    def shown() -> list[list[str]]:
        return [
            list(paths)
            for paths in browser.execute_script(
                "return [...document.querySelectorAll('#groups .group')]"
                ".map(g => [...g.querySelectorAll('.path')].map(p => p.textContent));"
            )
        ]

    def group_of(paths: list[str]) -> Any:
        return browser.find_elements(By.CSS_SELECTOR, "#groups .group")[shown().index(paths)]

    # The address as `imgwatch status` gives it (with the token), then the view's own query.
    browser.get(f"{library.url}/duplicates?threshold={THRESHOLD}&token={library.token}")
    wait.until(lambda _d: shown() == [library.a, library.c, library.b])
    wait.until(lambda _d: browser.find_elements(By.CSS_SELECTOR, "#bars .bar"))
    facts = group_of(library.a).find_element(By.CSS_SELECTOR, ".facts").text
    assert "160\u00d7120" in facts, facts
    assert browser.find_element(By.ID, "range").text == "groups 1\u20133 of 3"

    # "Not duplicates" on the smaller look-alike group: it goes, and a verdict is recorded.
    group_of(library.b).find_element(By.CSS_SELECTOR, "button.distinct").click()
    wait.until(lambda _d: shown() == [library.a, library.c])

    # "Keep this one" on scene1.jpg: asks first, then the two copies go to the trash.
    keeper = group_of(library.a).find_elements(By.CSS_SELECTOR, "figure")[
        library.a.index(str(library.root / "scene1.jpg"))
    ]
    keeper.find_element(By.CSS_SELECTOR, "button.keep-one").click()
    confirm = group_of(library.a).find_element(By.CSS_SELECTOR, ".confirm")
    assert confirm.is_displayed() and "2 other file(s) to the trash" in confirm.text
    assert all(os.path.exists(p) for p in library.a)  # nothing moved before the confirmation
    # Clicked twice in one go (a double click): the group's buttons are off from the first click
    # until the answer, so one request goes and the second click does nothing.
    off = browser.execute_script(
        "const g = arguments[0]; const yes = g.querySelector('button.confirm-trash'); yes.click();"
        "const off = [...g.querySelectorAll('button')].map(b => b.disabled); yes.click(); return off;",
        group_of(library.a),
    )
    assert off and all(off), off
    wait.until(lambda _d: shown() == [library.c])
    # One request went: the discard log has the two copies once each.
    log = [
        json.loads(line) for line in (library.daemon.data_dir / "dedupe-log.jsonl").read_text().splitlines()
    ]
    assert sorted(entry["path"] for entry in log) == sorted(
        p for p in library.a if not p.endswith("/scene1.jpg")
    )
    assert "2 file(s) moved to the trash" in browser.find_element(By.ID, "status").text

    # After a reload (a fresh computation of the changed index): still only the exact group.
    browser.refresh()
    wait.until(
        lambda _d: shown() == [library.c] and "updating" not in browser.find_element(By.ID, "status").text
    )
    assert library.ready("/api/duplicates", threshold=THRESHOLD)["total"] == 1

    # The command line agrees: the verdict, the groups, and the copies in the freedesktop trash.
    groups = imgwatch_cli(library.daemon.data_dir, "duplicates", "--threshold", str(THRESHOLD), "--json")
    assert groups.returncode == 0, groups.stderr
    assert [g["paths"] for g in json.loads(groups.stdout)["groups"]] == [library.c]
    verdicts = imgwatch_cli(library.daemon.data_dir, "duplicates", "--verdicts", "--json")
    assert [sorted((v["a"], v["b"])) for v in json.loads(verdicts.stdout)["verdicts"]] == [library.b]
    copies = [p for p in library.a if not p.endswith("/scene1.jpg")]
    assert not any(os.path.exists(p) for p in copies) and os.path.exists(str(library.root / "scene1.jpg"))
    assert sorted(os.listdir(library.trash)) == sorted(os.path.basename(p) for p in copies)

    # The histogram shows the verdict (red) and the two confirmed pairs (green), and a threshold
    # between them.
    histogram = library.ready("/api/duplicates/histogram", threshold=THRESHOLD)
    [verdict] = histogram["verdicts"]
    assert sorted((verdict["a"], verdict["b"])) == library.b
    assert len(histogram["confirmed"]) == 2 and min(histogram["confirmed"]) >= THRESHOLD
    assert verdict["score"] < histogram["suggested"] <= min(histogram["confirmed"])
    wait.until(lambda _d: len(browser.find_elements(By.CSS_SELECTOR, "#bars .mark.verdict")) == 1)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .mark.confirmed")) == 2
    assert not browser.find_element(By.ID, "suggest").get_attribute("hidden")
