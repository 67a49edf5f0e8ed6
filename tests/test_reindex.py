"""Shadow reindex on real services: new weights, PCA and a new ANN index, while searches keep answering."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.events import ImageCreated, ImageDeleted, ImageModified
from imgwatch.reindex import BackgroundReindex, Mode, Reindexer, next_step, wanted_index
from imgwatch.runtime import dispatch
from imgwatch.samples import photo
from imgwatch.search import search_images
from imgwatch.services.abc import FileBlob, content_hash
from imgwatch.services.build import open_services, stored_index, stored_signature
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec
from imgwatch.services.ledger import ReindexLedger
from imgwatch.services.pca import NotEnoughSamplesError, PCATransform
from imgwatch.services.vectors import open_connections
from tests.conftest import index, jpeg_bytes, write_photo
from tests.harness import SUITE_PRECISION, wait_until

# One worker for the module: its module-scoped daemon (or model) is then started once.
pytestmark = pytest.mark.xdist_group("reindex")


@pytest.fixture(scope="module")
def other_extractor() -> Iterator[VGG16Extractor]:
    """The same network with other random weights: what a user switching weights gets."""
    model = VGG16Extractor(WeightsSpec.parse("random:1"), precision=SUITE_PRECISION, batch_size=8)
    yield model
    model.close()


def _top_path(services: Any, image: Path) -> tuple[str, str]:
    """Search ``image`` the way the daemon does; returns (first result, weights that embedded the query)."""
    with services.serving.use() as ctx:
        [result] = search_images([(str(image), image.read_bytes())], ctx, k=3)
        return result.matches[0].path, ctx.extractor.signature.weights


def test_new_weights_build_a_shadow_collection_while_searches_answer_from_the_old_one(
    settings: Settings, extractor: VGG16Extractor, other_extractor: VGG16Extractor, photos: Path
) -> None:
    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, photos)
        old_collection = services.ctx.vectors.collection

    switched = settings.replace(weights="random:1")
    seen_during_build: list[tuple[str, str]] = []
    changed, added, removed = photos / "photo2.jpg", photos / "new.jpg", photos / "photo1.jpg"

    with open_services(switched, command="test", extractors=[extractor, other_extractor]) as services:
        # Served as it is, by the model that made it.
        assert services.ctx.extractor is extractor

        def while_building(progress: dict[str, Any]) -> None:
            assert progress["phase"] == "building"
            seen_during_build.append(_top_path(services, photos / "photo0.jpg"))
            if len(seen_during_build) == 1:
                # Live changes meanwhile, handled by the serving (old) context as the daemon would.
                changed.write_bytes(jpeg_bytes(photo(40, (480, 360))))
                write_photo(added, 41)
                removed.unlink()
                with services.serving.use() as ctx:
                    for event in (
                        ImageModified(str(changed)),
                        ImageCreated(str(added)),
                        ImageDeleted(str(removed)),
                    ):
                        dispatch(event, ctx)

        reindexer = Reindexer(services, batch=2, switch_when_left=1, on_progress=while_building)
        step = reindexer.pending()
        assert step is not None and step.mode is Mode.EXTRACT
        before = other_extractor.images_embedded
        counts = reindexer.run()

        ctx = services.ctx
        assert counts["steps"] == 1
        assert seen_during_build and all(
            hit == str(photos / "photo0.jpg") and weights == "random:0" for hit, weights in seen_during_build
        )
        assert ctx.extractor is other_extractor
        assert stored_signature(services.catalog) == other_extractor.signature
        assert ctx.vectors.collection != old_collection
        assert old_collection not in ctx.vectors.collections()
        # Every file present has exactly one vector, made by the new weights, for its current content.
        records = services.catalog.ids_with_vectors()
        assert {r.path for r in records.values()} == {str(p) for p in photos.rglob("*.jpg")}
        assert {r.signature for r in records.values()} == {other_extractor.signature.key}
        assert ctx.vectors.all_ids() == set(records)
        for path in (changed, added):
            record = services.catalog.get(str(path))
            assert record is not None
            stored = ctx.vectors.get_vectors([record.id])[record.id]
            assert float(stored @ other_extractor.embed(path.read_bytes())) > 0.999
        assert other_extractor.images_embedded - before >= len(records)
        assert _top_path(services, changed) == (str(changed), "random:1")
        assert ReindexLedger(services.catalog).progress()["total"] == len(records)
        assert reindexer.pending() is None


def test_an_interrupted_reindex_resumes_without_redoing_its_work(
    settings: Settings, extractor: VGG16Extractor, other_extractor: VGG16Extractor, photos: Path
) -> None:
    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, photos)
    switched = settings.replace(weights="random:1")
    stop = threading.Event()
    before = other_extractor.images_embedded

    with open_services(switched, command="test", extractors=[extractor, other_extractor]) as services:
        Reindexer(services, batch=3, switch_when_left=1, on_progress=lambda _p: stop.set()).run(stop)
        assert services.ctx.extractor is extractor  # not switched
        assert open_connections(switched.vectors_uri) == 1  # the paused build's store is closed
        assert ReindexLedger(services.catalog).progress()["done"] == 3
    with open_services(switched, command="test", extractors=[extractor, other_extractor]) as services:
        Reindexer(services).run()
        assert services.ctx.extractor is other_extractor
        assert services.ctx.vectors.count() == 8
    assert other_extractor.images_embedded - before == 8


def test_a_build_that_fails_and_is_retried_leaves_no_store_open(
    settings: Settings, extractor: VGG16Extractor, other_extractor: VGG16Extractor, photos: Path
) -> None:
    """Each retry opens a store on the new collection; a failed attempt's must be closed, or every
    retry (one each RETRY_S, for the life of the daemon) leaks a Milvus client."""
    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, photos)
    switched = settings.replace(weights="random:1")
    uri = switched.vectors_uri
    clients: dict[str, int] = {}
    """Clients of the Milvus open when each attempt (by its start time) first reported progress."""

    with open_services(switched, command="test", extractors=[extractor, other_extractor]) as services:
        serving = services.ctx.vectors

        def fail_three_times(progress: dict[str, Any]) -> None:
            if progress["started_at"] in clients:
                return
            clients[progress["started_at"]] = open_connections(uri)
            if len(clients) <= 3:
                # The collection goes from under the build: its next write fails, for real.
                serving.drop_collection(progress["collection"])

        reindexer = Reindexer(services, batch=2, switch_when_left=1, on_progress=fail_three_times)
        background = BackgroundReindex(reindexer, services)
        background.RETRY_S = 0.05
        background.start()
        try:
            wait_until(lambda: services.ctx.extractor is other_extractor, timeout=120)
        finally:
            background.stop(timeout=60)

        assert len(clients) == 4  # three failed attempts, then one that switched
        assert services.catalog.last_job_runs()["reindex"]["outcome"] == "ok"
        assert list(clients.values()) == [2, 2, 2, 2]  # the serving store's and the attempt's own
        assert open_connections(uri) == 1  # the new serving store; the old one closed at the switch
        # What the failed attempts wrote went with their collection: the switch waited for all of it.
        records = services.catalog.ids_with_vectors()
        assert len(records) == 8 and services.ctx.vectors.all_ids() == set(records)
    assert open_connections(uri) == 0


def test_a_retried_build_switches_only_once_the_new_collection_holds_every_vector(
    settings: Settings, extractor: VGG16Extractor, other_extractor: VGG16Extractor, photos: Path
) -> None:
    """The ledger says which rows have their vector in the new collection; when the collection lost
    them (dropped, emptied, a Milvus that did not keep its writes), a retry that trusts the ledger
    switches to a collection with vectors missing. The build checks the collection itself."""
    from imgwatch.services.vectors import MilvusVectorStore

    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, photos)
    switched = settings.replace(weights="random:1")
    attempts: list[str] = []

    with open_services(switched, command="test", extractors=[extractor, other_extractor]) as services:
        serving = services.ctx.vectors

        def fail_the_first(progress: dict[str, Any]) -> None:
            if not attempts:
                attempts.append(progress["collection"])
                # Two rows are in the new collection and the ledger; then the collection goes from
                # under the build (its next write fails, for real), and the ledger still says two.
                assert ReindexLedger(services.catalog).progress()["done"] == 2
                serving.drop_collection(progress["collection"])

        reindexer = Reindexer(services, batch=2, switch_when_left=1, on_progress=fail_the_first)
        with pytest.raises(Exception, match="collection"):
            reindexer.run()
        assert services.ctx.extractor is extractor  # not switched
        [collection] = attempts
        # An entity the catalog knows nothing of, in the collection the retry resumes.
        stray = MilvusVectorStore(switched.vectors_uri, dimension=4096, collection=collection)
        try:
            stray.upsert([(10_000, "/nowhere.jpg", np.ones(4096, dtype=np.float32) / 64)])
        finally:
            stray.close()

        reindexer.run()  # the retry

        ctx = services.ctx
        assert ctx.extractor is other_extractor
        assert ctx.vectors.collection == collection
        records = services.catalog.ids_with_vectors()
        assert len(records) == 8
        assert {r.signature for r in records.values()} == {other_extractor.signature.key}
        assert ctx.vectors.all_ids() == set(records)
        for record in records.values():
            stored = ctx.vectors.get_vectors([record.id])[record.id]
            assert float(stored @ other_extractor.embed(Path(record.path).read_bytes())) > 0.999


def test_pca_needs_enough_vectors_and_says_so(
    settings: Settings, extractor: VGG16Extractor, photos: Path
) -> None:
    with open_services(settings.replace(pca=512), command="test", extractor=extractor) as services:
        index(services.ctx, photos)
        reindexer = Reindexer(services)
        assert reindexer.pending() is not None
        with pytest.raises(NotEnoughSamplesError, match="needs at least 512 of them; the index has 8"):
            reindexer.run()
        # The index keeps working at full size.
        assert services.ctx.extractor.signature.dimension == 4096
        assert _top_path(services, photos / "photo3.jpg")[0] == str(photos / "photo3.jpg")


PCA_ROWS = 530
"""Rows in the index a PCA-512 is fitted on (it needs at least 512 vectors)."""
PCA_PHOTOS = 16
"""Of those, photos indexed for real (VGG16 on each); the others hold vectors made from theirs."""


def _index_derived_vectors(ctx: Context, folder: Path, count: int, seed: int) -> None:
    """``count`` more rows with vectors made from the indexed ones, as a handler stores them: each a
    seeded blend of two real fc7 vectors plus noise, kept non-negative (fc7 follows a ReLU) and
    L2-normalised. Running VGG16 on 500 more photos would cost minutes on an AVX2 CPU, and the
    projection never reads a file: it only needs enough vectors, realistic ones, in the index."""
    real = ctx.vectors.get_vectors(sorted(ctx.vectors.all_ids()))
    bases = np.stack(list(real.values()))
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(count):
        i, j = rng.choice(len(bases), size=2, replace=False)
        share = rng.uniform(0.2, 0.8)
        noise = rng.normal(0, 0.3 / np.sqrt(bases.shape[1]), size=bases.shape[1])
        vector = np.maximum(share * bases[i] + (1 - share) * bases[j] + noise, 0).astype(np.float32)
        path = str(folder / f"derived{n:03d}.jpg")
        data = f"derived {seed} {n}".encode()
        rows.append((ctx.catalog.mark_pending(path, len(data), 0), data, vector / np.linalg.norm(vector)))
    for start in range(0, len(rows), 100):
        ctx.vectors.upsert(
            [(record.id, record.path, vector) for record, _, vector in rows[start : start + 100]]
        )
    for record, data, _ in rows:
        blob = FileBlob(record.path, data, len(data), 0, content_hash(data))
        ctx.catalog.mark_indexed(record.id, blob, ctx.signature_key)


def _pca_photos(root: Path) -> Path:
    """The :data:`PCA_PHOTOS` photos indexed for real in the PCA tests, in ``root``."""
    for seed in range(PCA_PHOTOS):
        write_photo(root / f"{seed:03d}.jpg", 1000 + seed, (160, 120))
    return root


def test_pca_512_projects_the_stored_vectors_and_keeps_the_results(
    settings: Settings, extractor: VGG16Extractor, tmp_path: Path
) -> None:
    root = _pca_photos(tmp_path / "many")
    # The same scenes at another size: each query's own photo is its best match, with or without PCA.
    own = {
        write_photo(tmp_path / "queries" / f"q{seed}.jpg", 1000 + seed, (200, 150)): root / f"{seed:03d}.jpg"
        for seed in range(0, PCA_PHOTOS, 3)
    }
    queries = list(own)
    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, root)
        _index_derived_vectors(services.ctx, root, PCA_ROWS - PCA_PHOTOS, seed=7)
        full = {
            q: [m.path for m in r.matches] for q, r in zip(queries, _search(services, queries), strict=True)
        }
    assert all(full[q][0] == str(own[q]) for q in queries)

    with open_services(settings.replace(pca=512), command="test", extractor=extractor) as services:
        before = extractor.images_embedded
        counts = Reindexer(services).run()
        assert counts == {"steps": 1, "vectors": PCA_ROWS}
        assert extractor.images_embedded == before  # projected from the stored vectors: no model run
        ctx = services.ctx
        signature = ctx.extractor.signature
        assert signature.dimension == 512 and signature.pca.startswith("4096->512:")
        assert stored_signature(services.catalog) == signature
        ids = sorted(ctx.vectors.all_ids())
        assert len(ids) == PCA_ROWS
        assert {v.shape for v in ctx.vectors.get_vectors(ids[:5]).values()} == {(512,)}
        assert (settings.data_dir / "pca" / f"pca-512-{signature.pca_version}.npz").is_file()
        projected = {
            q: [m.path for m in r.matches] for q, r in zip(queries, _search(services, queries), strict=True)
        }

    overlap = np.mean([len(set(full[q]) & set(projected[q])) / 10 for q in queries])
    assert overlap >= 0.9
    assert all(projected[q][0] == full[q][0] for q in queries)
    # A reopened index serves the projection (transform loaded from the data dir).
    with open_services(settings.replace(pca=512), command="test", extractor=extractor) as services:
        assert services.ctx.extractor.signature == signature
        assert Reindexer(services).pending() is None


def test_pca_auto_projects_to_512_at_its_threshold_and_stays_there(
    settings: Settings, extractor: VGG16Extractor, tmp_path: Path
) -> None:
    root = _pca_photos(tmp_path / "many")
    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, root)
        _index_derived_vectors(services.ctx, root, PCA_ROWS - PCA_PHOTOS, seed=7)
    # One vector short of its threshold: full size. (The default threshold, from this machine's
    # memory, is tens of thousands of vectors away.)
    for short in (settings.replace(pca="auto", pca_auto_at=PCA_ROWS + 1), settings.replace(pca="auto")):
        with open_services(short, command="test", extractor=extractor) as services:
            assert Reindexer(services).pending() is None
    reached = settings.replace(pca="auto", pca_auto_at=PCA_ROWS)
    with open_services(reached, command="test", extractor=extractor) as services:
        reindexer = Reindexer(services)
        step = reindexer.pending()
        assert step is not None and (step.mode, step.pca) == (Mode.PROJECT, 512)
        before = extractor.images_embedded
        assert reindexer.run() == {"steps": 1, "vectors": PCA_ROWS}
        assert extractor.images_embedded == before  # projected from the stored vectors
        signature = services.ctx.extractor.signature
        assert signature.dimension == 512 and signature.pca.startswith("4096->512:")
        photo0 = root / "000.jpg"
        assert _top_path(services, photo0)[0] == str(photo0)
    # Projected, it stays so, even where the count is below the threshold now: going back would run
    # the model on every file again.
    with open_services(short, command="test", extractor=extractor) as services:
        assert services.ctx.extractor.signature == signature
        assert Reindexer(services).pending() is None


def _search(services: Any, queries: list[Path]) -> list[Any]:
    with services.serving.use() as ctx:
        return search_images([(str(q), q.read_bytes()) for q in queries], ctx, k=10)


def test_changing_the_index_type_copies_vectors_into_a_new_index(
    settings: Settings, extractor: VGG16Extractor, photos: Path
) -> None:
    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, photos)
        ids = sorted(services.ctx.vectors.all_ids())
        vectors = services.ctx.vectors.get_vectors(ids)
    ivf = settings.replace(index_type="IVF_FLAT")
    with open_services(ivf, command="test", extractor=extractor) as services:
        before = extractor.images_embedded
        Reindexer(services).run()
        assert extractor.images_embedded == before
        assert stored_index(services.catalog, ivf) == {"type": "IVF_FLAT", "params": {"nlist": 16}}
        copied = services.ctx.vectors.get_vectors(ids)
        assert all(np.allclose(copied[k], vectors[k]) for k in ids)
        assert _top_path(services, photos / "photo5.jpg")[0] == str(photos / "photo5.jpg")


def test_ivf_parameters_follow_the_collection_size_with_hysteresis(
    settings: Settings, extractor: VGG16Extractor
) -> None:
    ivf = settings.replace(index_type="IVF_FLAT")
    active = {"type": "IVF_FLAT", "params": {"nlist": 128}}
    assert wanted_index(ivf, active, 1_500) == active  # ideal 155: within a factor 2
    assert wanted_index(ivf, active, 10_000)["params"]["nlist"] == 400
    assert wanted_index(ivf, active, 100)["params"]["nlist"] == 40
    signature = extractor.signature
    assert next_step(signature, signature, None, active, active) is None
    grown = {"type": "IVF_FLAT", "params": {"nlist": 400}}
    step = next_step(signature, signature, None, active, grown)
    assert step is not None and step.mode is Mode.COPY


def test_a_leftover_collection_from_a_crash_is_dropped(
    settings: Settings, extractor: VGG16Extractor, photos: Path
) -> None:
    from imgwatch.services.vectors import MilvusVectorStore

    with open_services(settings, command="test", extractor=extractor) as services:
        index(services.ctx, photos)
        stray = MilvusVectorStore(settings.vectors_uri, dimension=4096, collection="imgwatch_7")
        stray.close()
        foreign = MilvusVectorStore(settings.vectors_uri, dimension=8, collection="someone_elses")
        foreign.close()
        assert "imgwatch_7" in services.ctx.vectors.collections()
        Reindexer(services).run()
        assert services.ctx.vectors.collections() == ["imgwatch", "someone_elses"]


def test_pca_transform_round_trip_and_version(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = np.abs(rng.normal(size=(300, 64))).astype(np.float32)
    transform = PCATransform.fit([vectors[:100], vectors[100:]], 16)
    again = PCATransform.fit([vectors], 16)
    assert transform.version == again.version
    transform.save(tmp_path)
    loaded = PCATransform.load(tmp_path, 16, transform.version)
    assert np.array_equal(loaded.components, transform.components)
    assert 0 < transform.energy <= 1
    projected = transform.apply(vectors)
    assert projected.shape == (300, 16)
    # Inner products are approximated (the axes are uncentred), never inflated.
    assert float(np.max(np.linalg.norm(projected, axis=1) - np.linalg.norm(vectors, axis=1))) <= 1e-4
