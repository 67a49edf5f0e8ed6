"""Real services on tmp_path: SQLite migrated by Alembic, Milvus Lite, VGG16 with seeded random weights."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from PIL import Image

from watcher.config import Settings
from watcher.context import Context
from watcher.indexer import IndexSummary, normalise_root, plan, run_plan
from watcher.samples import photo
from watcher.scan import ScanRules
from watcher.services.build import open_context
from watcher.services.extractor import VGG16Extractor, WeightsSpec

WEIGHTS = "random:0"


@pytest.fixture(scope="session")
def extractor() -> Iterator[VGG16Extractor]:
    """One real VGG16 for the whole session (loading it costs seconds); contexts adopt it."""
    model = VGG16Extractor(WeightsSpec.parse(WEIGHTS), batch_size=8)
    yield model
    model.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", weights=WEIGHTS, batch_size=8)


OpenContext = Callable[..., AbstractContextManager[Context]]


@pytest.fixture
def open_ctx(settings: Settings, extractor: VGG16Extractor) -> OpenContext:
    def opener(**overrides: object) -> AbstractContextManager[Context]:
        return open_context(settings, command="test", extractor=extractor, **overrides)  # type: ignore[arg-type]

    return opener


@pytest.fixture
def ctx(open_ctx: OpenContext) -> Iterator[Context]:
    with open_ctx() as context:
        yield context


def index(ctx: Context, *roots: Path | str, rules: ScanRules | None = None) -> IndexSummary:
    """What ``imgwatch index`` does, in-process, on the given context."""
    normalised = [normalise_root(str(r)) for r in roots]
    return run_plan(plan(normalised, rules or ScanRules(), ctx), ctx, workers=12)


def jpeg_bytes(image: Image.Image, quality: int = 90, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def write_photo(path: Path, seed: int, size: tuple[int, int] = (480, 360)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(photo(seed, size)))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of eight distinct photos, two of them in a subfolder."""
    root = tmp_path / "photos"
    for seed in range(6):
        write_photo(root / f"photo{seed}.jpg", seed)
    for seed in (6, 7):
        write_photo(root / "trip" / f"photo{seed}.jpg", seed)
    return root


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread of ours running (watchdog's conftest does the same)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and t.name.startswith("imgwatch")
    ]
    for thread in leaked:
        thread.join(timeout=2)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"
