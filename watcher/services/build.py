"""The one place that builds the real services from settings (rclip's ``init_rclip``).

Everything else receives them, so tests build exactly these classes on ``tmp_path``.

The catalog's ``meta`` table says what the index *is*: the extractor signature of its vectors, the
weights setting that made them, the Milvus collection that holds them and its ANN index. The settings
say what it *should be*. Commands serve the index as it is; a reindex (:mod:`imgwatch.reindex`) makes
it what it should be.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.errors import ConfigError, ExtractorMismatchError, ImgwatchError
from imgwatch.lock import DataDirLock
from imgwatch.services.abc import Extractor, ExtractorSignature
from imgwatch.services.catalog import SQLiteCatalog, open_catalog
from imgwatch.services.files import LocalFileReader
from imgwatch.services.lazy_extractor import LazyExtractor, NoModel, model_loaded
from imgwatch.services.single_flight import SingleFlight
from imgwatch.serving import Serving

if TYPE_CHECKING:
    from imgwatch.services.model_spec import WeightsSpec

log = logging.getLogger(__name__)

SIGNATURE_META_KEY = "extractor_signature"
WEIGHTS_META_KEY = "weights_setting"
"""The ``weights`` setting that made the index's vectors: to load that model again while a reindex to
other weights runs (a weights file's signature holds only its hash)."""
COLLECTION_META_KEY = "collection"
INDEX_META_KEY = "ann_index"
REINDEX_META_KEY = "reindex"
GENERATION_META_KEY = "collection_generation"
NODE_META_KEY = "node_id"
STORE_META_KEY = "vector_store"
"""Where ``imgwatch migrate`` moved the index: ``{"uri": server URI or None for the data dir's Milvus
Lite file, "collection", "moved_at", "from"}``. Absent: where the settings say."""
MIGRATION_META_KEY = "migration"
"""An unfinished ``imgwatch migrate``: ``{"to", "collection", "through": last catalog id copied}``."""

#: Commands that write the configured extractor's vectors, so refuse an index made by another one.
WRITING_COMMANDS = frozenset({"index"})
#: Commands whose model only embeds query images, never vectors to store.
QUERYING_COMMANDS = frozenset({"search", "check"})


def configured_signature(settings: Settings, stored: ExtractorSignature | None = None) -> ExtractorSignature:
    """The signature the configured model will have (before any PCA), without loading it; with
    ``precision = auto``, in the precision class of the ``stored`` index (see ``following_index``)."""
    from imgwatch.services.model_spec import WeightsSpec, following_index, signature_for

    spec = WeightsSpec.parse(settings.weights)
    precision = settings.precision
    if precision == "auto" and settings.node is not None:
        # A shared collection: other watchers (older versions, other CPUs, a GPU) write float vectors
        # into it, and nothing here sees their class, so auto stays float; int8 must be asked for.
        precision = "float"
    return following_index(signature_for(spec, spec.identity(), precision), stored)


def stored_signature(catalog: SQLiteCatalog) -> ExtractorSignature | None:
    text = catalog.get_meta(SIGNATURE_META_KEY)
    if not text:
        return None
    signature = ExtractorSignature.from_json(text)
    # Reindexes before precision classes recorded their target before its model loaded, as "auto":
    # those vectors are float (auto never picked int8 then), and "auto" here would read as a new index.
    return replace(signature, dtype="float") if signature.dtype == "auto" else signature


def stored_index(catalog: SQLiteCatalog, settings: Settings) -> dict[str, Any]:
    """The active collection's ANN index; indexes made before this was recorded used the defaults."""
    from imgwatch.services.vectors import default_index_spec

    text = catalog.get_meta(INDEX_META_KEY)
    return dict(json.loads(text)) if text else default_index_spec(settings.index_type, settings.index_params)


def moved_store(settings: Settings, catalog: SQLiteCatalog) -> Settings:
    """``settings`` pointing at the store ``imgwatch migrate`` moved the index to, if it did.

    The data dir remembers it, so that after a migration nothing else needs changing. Settings that
    name another store are refused rather than obeyed: that store does not hold this index, and
    serving from it would look like an empty (or stale) library.
    """
    text = catalog.get_meta(STORE_META_KEY)
    if not text:
        return settings
    moved = json.loads(text)
    uri = moved["uri"]
    if settings.milvus_uri == uri:
        return settings
    if settings.milvus_uri is not None:
        where = uri or f"Milvus Lite in the data dir ({settings.data_dir / 'vectors.db'})"
        raise ConfigError(
            "milvus_uri",
            f"{settings.milvus_uri} does not hold this data dir's index: `imgwatch migrate` moved it to "
            f"{where} on {moved['moved_at']}. Remove milvus_uri from the settings"
            + (f", or set it to {uri}" if uri else "")
            + ", or migrate the index there (`imgwatch migrate --to URI`).",
        )
    return settings.replace(milvus_uri=uri)


def stored_dimension(catalog: SQLiteCatalog) -> int:
    signature = stored_signature(catalog)
    return signature.dimension if signature else 4096


def active_collection(catalog: SQLiteCatalog, settings: Settings) -> str:
    return catalog.get_meta(COLLECTION_META_KEY) or settings.collection


def pca_directory(settings: Settings) -> Path:
    return settings.data_dir / "pca"


def record_model(
    catalog: SQLiteCatalog, settings: Settings, index: dict[str, Any], model: ExtractorSignature
) -> None:
    """Record in the catalog what a model that just loaded (or was handed in) makes, where its
    vectors are the index's: a new index's signature, ANN index and weights setting, else the
    precision the model computes in (``precision = auto`` settles it only at the load)."""
    import sqlalchemy as sa

    from imgwatch.services.catalog_tables import META

    text = catalog.get_meta(SIGNATURE_META_KEY)
    stored = ExtractorSignature.from_json(text) if text else None
    if stored is None:
        # Written with the model, not before: a model that never loads leaves no claim behind.
        catalog.set_meta(SIGNATURE_META_KEY, model.to_json())
        catalog.set_meta(INDEX_META_KEY, json.dumps(index))
        catalog.set_meta(WEIGHTS_META_KEY, settings.weights)
        return
    if stored.base.key != model.base.key or stored.dtype == model.dtype:
        return
    # Only if nobody changed it meanwhile (a reindex's switch writes another model's signature).
    with catalog.engine.begin() as conn:
        conn.execute(
            sa.update(META)
            .where(META.c.key == SIGNATURE_META_KEY, META.c.value == text)
            .values(value=replace(stored, dtype=model.dtype).to_json())
        )


def check_signature(stored: ExtractorSignature | None, configured: ExtractorSignature) -> None:
    if stored is not None and stored.base.key != configured.base.key:
        raise ExtractorMismatchError(stored.to_json(), configured.to_json(), stored.differences(configured))


class ExtractorCache:
    """Models by base signature, each made once; closes only the ones it made itself.

    A reindex needs two at once (the serving one answers queries while the new one extracts), and the
    PCA variants of one model share it. The models it makes are lazy: VGG16 is loaded (and torch
    imported) when the first image is due, so runs that only compare, move or copy never load it.
    """

    def __init__(
        self,
        settings: Settings,
        adopted: Iterable[Extractor] = (),
        on_loaded: Callable[[Extractor], None] | None = None,
    ) -> None:
        self._settings = settings
        self._models: dict[str, Extractor] = {e.signature.base.key: e for e in adopted}
        self._owned: set[str] = set()
        self._on_loaded = on_loaded

    def base(
        self, signature: ExtractorSignature, weights_setting: str | None, *, queries_only: bool = False
    ) -> Extractor:
        """The model that makes ``signature.base`` vectors (loaded when it first embeds). With
        ``queries_only``, for an int8 index (or a new one under ``auto``), a float model that records
        nothing: its queries find as much
        (benchmarks/precision_recall.py), and a one-shot search neither loads nor, after an upgrade,
        compiles the int8 package."""
        from imgwatch.services.model_spec import WeightsSpec, model_precision, signature_for

        key = signature.base.key
        if (
            queries_only
            and key not in self._models
            and (signature.precision_class == "int8" or signature.dtype == "auto")
        ):
            # A new index's model (dtype still auto) would settle on int8 too, for nothing.
            key = f"{key}:queries"
        if key not in self._models:
            setting = self._weights_setting(signature.base, weights_setting)
            spec = WeightsSpec.parse(setting)
            # Torch-free, and once: the model gets this identity instead of hashing a weights file again.
            identity = spec.identity()
            if signature_for(spec, identity, signature.dtype).key != signature.base.key:
                raise ImgwatchError(
                    f"weights {setting!r} no longer make the vectors this index was built with "
                    f"({signature.weights}); restore them or rebuild: imgwatch index --rebuild ROOT..."
                )
            queries = key.endswith(":queries")
            precision = "float" if queries else model_precision(self._settings.precision, signature.base)
            self._models[key] = LazyExtractor(
                signature.base,
                lambda: _build_extractor(self._settings, spec, identity, precision),
                on_loaded=lambda loaded: self._loaded(key, loaded),
                queries_only=queries,
            )
            self._owned.add(key)
        return self._models[key]

    def _loaded(self, key: str, loaded: Extractor) -> None:
        if key.endswith(":queries"):
            return  # its vectors are not the index's: nothing to record, nobody else to serve
        if self._on_loaded is not None:
            self._on_loaded(loaded)
        # A new index's model (``auto``) may settle on another precision class than its placeholder
        # signature's: later lookups by the class it chose must find it, not load a second VGG16.
        self._models.setdefault(loaded.signature.base.key, self._models[key])

    def for_signature(
        self, signature: ExtractorSignature, weights_setting: str | None, *, queries_only: bool = False
    ) -> Extractor:
        """An extractor making exactly ``signature`` vectors: the model, then its PCA transform."""
        from imgwatch.services.pca import PCATransform, ProjectedExtractor

        model = self.base(signature, weights_setting, queries_only=queries_only)
        version = signature.pca_version
        if version is None:
            return model
        transform = PCATransform.load(pca_directory(self._settings), signature.dimension, version)
        return ProjectedExtractor(model, transform)

    def release_except(self, keep: Extractor) -> None:
        """Close the models this cache loaded other than ``keep``'s (after a switch away from them)."""
        wanted = self._models.get(keep.signature.base.key)
        for key in [k for k in list(self._owned) if self._models[k] is not wanted]:
            self._owned.discard(key)
            gone = self._models.pop(key)
            for alias in [k for k, m in list(self._models.items()) if m is gone]:
                del self._models[alias]
            gone.close()

    def close(self) -> None:
        for key in list(self._owned):
            self._models.pop(key).close()
        self._owned.clear()

    def _weights_setting(self, base: ExtractorSignature, recorded: str | None) -> str:
        from imgwatch.services.model_spec import IMAGENET_IDENTITY

        if base.key == configured_signature(self._settings, base).base.key:
            return self._settings.weights
        if base.weights.startswith("random:"):
            return base.weights
        if base.weights == IMAGENET_IDENTITY:
            return "imagenet"
        if recorded is not None:
            return recorded
        raise ImgwatchError(
            f"the index was built with weights {base.weights}, and it is not recorded where they came "
            "from; set --weights to that file, or rebuild: imgwatch index --rebuild ROOT..."
        )


def _build_extractor(settings: Settings, weights: WeightsSpec, identity: str, precision: str) -> Extractor:
    from imgwatch.services.extractor import VGG16Extractor

    return VGG16Extractor(
        weights,
        weights_identity=identity,
        device=settings.device,
        precision=precision,
        batch_size=settings.batch_size,
        max_pixels=settings.max_pixels,
        # The compiled int8 model belongs with the index it makes vectors for.
        compile_cache=settings.data_dir / "compile-cache",
    )


def node_identity(catalog: SQLiteCatalog, settings: Settings) -> tuple[int, str]:
    """``(node id, node name)`` of this watcher in its collection; node id 0 when it is alone there.

    A shared collection's node id is drawn once (random, so watchers need no coordination) and kept
    in the catalog: it is part of every Milvus key this catalog's rows have.
    """
    import secrets
    import socket

    from imgwatch.services.abc import FileState
    from imgwatch.services.vectors import MAX_NODE_ID

    if settings.node is None:
        return 0, socket.gethostname()
    text = catalog.get_meta(NODE_META_KEY)
    if text is None:
        if catalog.counts()[FileState.INDEXED]:
            raise ImgwatchError(
                f"`node = {settings.node!r}` was set after this catalog indexed files alone, with keys "
                "that are not scoped to a node; index it again: imgwatch index --rebuild ROOT..."
            )
        text = str(secrets.randbelow(MAX_NODE_ID) + 1)
        catalog.set_meta(NODE_META_KEY, text)
    return int(text), settings.node


def open_store(
    settings: Settings, catalog: SQLiteCatalog, collection: str, dimension: int, index: dict[str, Any]
) -> Any:  # MilvusVectorStore; Any keeps pymilvus off this module's import path
    from imgwatch.services.vectors import MilvusVectorStore

    node_id, node = node_identity(catalog, settings)
    store = MilvusVectorStore(
        settings.vectors_uri,
        dimension=dimension,
        collection=collection,
        token=settings.milvus_token,
        index_type=index["type"],
        index_params=index["params"],
        node_id=node_id,
        node=node,
    )
    try:
        other = store.foreign_node_in_own_range()
    except BaseException:
        store.close()
        raise
    if other is not None:
        store.close()
        raise ImgwatchError(
            f"node id {node_id} of this watcher ({node!r}) is also used by {other!r} in collection "
            f"{collection!r}; give one of them a fresh catalog (another --data-dir) and index again"
        )
    return store


@dataclass
class Services:
    """Everything one command runs on: the serving context and what a reindex needs to build another."""

    settings: Settings
    catalog: SQLiteCatalog
    serving: Serving
    extractors: ExtractorCache
    stack: contextlib.ExitStack = field(repr=False)
    """Closes what was opened for this command (stores opened later by a reindex join it)."""

    @property
    def ctx(self) -> Context:
        return self.serving.current


@contextlib.contextmanager
def open_services(
    settings: Settings,
    *,
    command: str,
    extractor: Extractor | None = None,
    extractors: Iterable[Extractor] = (),
    rebuild: bool = False,
    model: bool = True,
    lazy_store: bool = False,
) -> Iterator[Services]:
    """Lock the data dir, open the catalog and the serving collection, and ready the model that made it
    (a :class:`LazyExtractor`: loaded when the first image needs it, never for a run that needs none).

    An index made by another model than the configured one is served as it is (searches keep working
    while :mod:`imgwatch.reindex` builds its replacement), except by commands that would write the
    configured model's vectors into it: those refuse before loading any model, unless ``rebuild``.
    Passed-in extractors are used and never closed: tests share one VGG16 across many contexts.
    With ``model=False`` no model is loaded and nothing is written: the context's extractor is a
    :class:`NoModel`, for commands that only read stored vectors. A new index's signature is recorded
    when its model loads (:func:`record_model`). With ``lazy_store``, the vector store is a
    :class:`~imgwatch.services.lazy_store.LazyStore`: opened at its first use (``index`` of a tree
    with nothing to store opens none).
    """
    with contextlib.ExitStack() as stack:
        lock = DataDirLock(settings.data_dir, command).acquire()
        stack.callback(lock.release)
        catalog = open_catalog(settings.catalog_path)
        stack.callback(catalog.close)
        settings = moved_store(settings, catalog)
        cache = ExtractorCache(
            settings,
            [*([extractor] if extractor else []), *extractors],
            on_loaded=lambda loaded: record_model(catalog, settings, index, loaded.signature),
        )
        stack.callback(cache.close)

        stored = stored_signature(catalog)
        if rebuild and stored is not None:
            log.warning("rebuilding: dropping every vector made by %s", stored.weights)
            _drop_every_collection(settings, catalog)
            stored = None
        # After a rebuild's drop: a rebuilt index is a new one (auto may settle its class afresh).
        configured = extractor.signature if extractor else configured_signature(settings, stored)
        if command in WRITING_COMMANDS:
            check_signature(stored, configured)
        serving_signature = stored or configured
        index = stored_index(catalog, settings) if stored else _configured_index(settings)
        # The store first: an unreachable server should fail in a second, not after loading a model
        # (a lazy store's user opens it before anything loads the model).
        collection = active_collection(catalog, settings)

        def store() -> Any:
            return open_store(settings, catalog, collection, serving_signature.dimension, index)

        from imgwatch.services.lazy_store import LazyStore

        vectors: Any = LazyStore(store, collection, alone=settings.node is None) if lazy_store else store()
        stack.callback(vectors.close)
        if model:
            serving = cache.for_signature(
                serving_signature,
                catalog.get_meta(WEIGHTS_META_KEY),
                queries_only=command in QUERYING_COMMANDS,
            )
            if model_loaded(serving):  # handed in; a lazy model records itself when it loads
                record_model(catalog, settings, index, serving.signature)
        else:
            serving = NoModel(serving_signature)
        ctx = Context(
            catalog=catalog,
            vectors=vectors,
            extractor=serving,
            files=LocalFileReader(settings.max_file_bytes),
            extractions=SingleFlight(),
        )
        yield Services(settings, catalog, Serving(ctx), cache, stack)


@contextlib.contextmanager
def open_context(
    settings: Settings,
    *,
    command: str,
    extractor: Extractor | None = None,
    extractors: Iterable[Extractor] = (),
    rebuild: bool = False,
    model: bool = True,
) -> Iterator[Context]:
    """The serving context of :func:`open_services`, for commands that need nothing more."""
    with open_services(
        settings, command=command, extractor=extractor, extractors=extractors, rebuild=rebuild, model=model
    ) as services:
        yield services.ctx


def _configured_index(settings: Settings) -> dict[str, Any]:
    """A new collection's index: as configured, else sized for an empty collection (a reindex resizes it
    as the collection grows)."""
    from imgwatch.services.vectors import AUTO, auto_index_params, default_index_spec

    if settings.index_type == AUTO:
        return default_index_spec(AUTO)
    params = settings.index_params or auto_index_params(settings.index_type, 0)
    return {"type": settings.index_type, "params": dict(params)}


def _drop_every_collection(settings: Settings, catalog: SQLiteCatalog) -> None:
    """For ``--rebuild``: the serving collection, an unfinished reindex's, and the catalog's claims."""
    from imgwatch.services.ledger import ReindexLedger

    if settings.node is not None and catalog.get_meta(NODE_META_KEY) is not None:
        # A shared collection: only this watcher's entities go; the others keep theirs.
        store = open_store(
            settings, catalog, settings.collection, stored_dimension(catalog), stored_index(catalog, settings)
        )
        try:
            store.delete(sorted(store.all_ids()))
        finally:
            store.close()
    else:
        names = {active_collection(catalog, settings), settings.collection}
        if reindex := catalog.get_meta(REINDEX_META_KEY):
            names.add(json.loads(reindex)["collection"])
        from imgwatch.services.vectors import drop_collections

        drop_collections(settings.vectors_uri, settings.milvus_token, names)
    ReindexLedger(catalog).clear()
    catalog.forget_vectors()
    for key in (SIGNATURE_META_KEY, COLLECTION_META_KEY, INDEX_META_KEY, REINDEX_META_KEY):
        catalog.delete_meta(key)
