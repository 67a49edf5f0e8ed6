"""The one place that builds the real services from settings (rclip's ``init_rclip``).

Everything else receives them, so tests build exactly these classes on ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from watcher.config import Settings
from watcher.context import Context
from watcher.errors import ExtractorMismatchError
from watcher.lock import DataDirLock
from watcher.services.abc import Extractor, ExtractorSignature, Vector
from watcher.services.catalog import SQLiteCatalog, open_catalog
from watcher.services.files import LocalFileReader

log = logging.getLogger(__name__)

SIGNATURE_META_KEY = "extractor_signature"


def configured_signature(settings: Settings) -> ExtractorSignature:
    """The signature the configured extractor will have, without loading the model."""
    from watcher.services.extractor import WeightsSpec, signature_for

    spec = WeightsSpec.parse(settings.weights)
    return signature_for(spec, spec.identity(), settings.precision)


def build_extractor(settings: Settings, signature: ExtractorSignature | None = None) -> Extractor:
    from watcher.services.extractor import VGG16Extractor, WeightsSpec

    return VGG16Extractor(
        WeightsSpec.parse(settings.weights),
        weights_identity=signature.weights if signature else None,
        device=settings.device,
        precision=settings.precision,
        batch_size=settings.batch_size,
        max_pixels=settings.max_pixels,
    )


class NoModel:
    """The extractor of a context that only reads stored vectors (``search --like``, ``duplicates``):
    it has the index's signature, and refuses to embed, so such commands never load VGG16."""

    def __init__(self, signature: ExtractorSignature) -> None:
        self._signature = signature

    @property
    def signature(self) -> ExtractorSignature:
        return self._signature

    @property
    def images_embedded(self) -> int:
        return 0

    def embed(self, data: bytes) -> Vector:
        raise RuntimeError("this command opened the index without a model")

    def close(self) -> None:
        pass


def stored_signature(catalog: SQLiteCatalog) -> ExtractorSignature | None:
    text = catalog.get_meta(SIGNATURE_META_KEY)
    return ExtractorSignature.from_json(text) if text else None


def check_signature(stored: ExtractorSignature | None, configured: ExtractorSignature) -> None:
    if stored is not None and stored.key != configured.key:
        raise ExtractorMismatchError(stored.to_json(), configured.to_json(), stored.differences(configured))


@contextlib.contextmanager
def open_context(
    settings: Settings,
    *,
    command: str,
    extractor: Extractor | None = None,
    rebuild: bool = False,
    model: bool = True,
) -> Iterator[Context]:
    """Lock the data dir, open the catalog and the vector store, build (or adopt) the extractor.

    Refuses, before loading any model, an index built by a different extractor unless ``rebuild``.
    A passed-in ``extractor`` is used (and not closed): tests share one VGG16 across many contexts.
    With ``model=False`` no model is loaded: the context's extractor is a :class:`NoModel`, for
    commands that only read stored vectors.
    """
    from watcher.services.vectors import MilvusVectorStore

    with contextlib.ExitStack() as stack:
        lock = DataDirLock(settings.data_dir, command).acquire()
        stack.callback(lock.release)
        catalog = open_catalog(settings.catalog_path)
        stack.callback(catalog.close)

        wanted = extractor.signature if extractor else configured_signature(settings)
        stored = stored_signature(catalog)
        if not rebuild:
            check_signature(stored, wanted)
        # The store first: an unreachable server should fail in a second, not after loading a model.
        vectors = MilvusVectorStore(
            settings.vectors_uri,
            dimension=wanted.dimension,
            collection=settings.collection,
            token=settings.milvus_token,
            index_type=settings.index_type,
            index_params=settings.index_params,
        )
        stack.callback(vectors.close)
        if not model:
            # Reading only: nothing is written, so the stored signature (if any) stays as it is.
            yield Context(
                catalog=catalog,
                vectors=vectors,
                extractor=NoModel(stored or wanted),
                files=LocalFileReader(settings.max_file_bytes),
            )
            return
        if extractor is None:
            extractor = build_extractor(settings, wanted)
            stack.callback(extractor.close)
        if rebuild and stored is not None:
            log.warning("rebuilding: dropping every vector made by %s", stored.weights)
            vectors.drop()
            catalog.forget_vectors()
        if rebuild or stored is None or stored != extractor.signature:
            catalog.set_meta(SIGNATURE_META_KEY, extractor.signature.to_json())
        yield Context(
            catalog=catalog,
            vectors=vectors,
            extractor=extractor,
            files=LocalFileReader(settings.max_file_bytes),
        )
