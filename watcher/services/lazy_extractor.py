"""An extractor whose model is loaded when the first image is due, not when a command starts.

Loading VGG16 imports torch and reads ~500 MB of weights (seconds, and ~2 GB of memory); an unchanged
tree, moves, deletes and copies of indexed content need none of it. The signature is known without
the model (:mod:`imgwatch.services.model_spec`), so signature checks, the PCA wrapper and the
reindex's plans all run before, or without, any load. Torch-free: this module imports no model code.
:class:`NoModel` is the extractor of commands that never embed at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from imgwatch.errors import ImgwatchError
from imgwatch.services.abc import Extractor, ExtractorSignature, Vector

log = logging.getLogger(__name__)

#: After a failed load, calls fail at once with its error for this long; then one tries again (a
#: daemon retries its files with a backoff, and a download that failed may work later).
LOAD_RETRY_S = 30.0


class ModelUnavailableError(ImgwatchError):
    """The model could not be loaded when an image needed it: not the image's fault, so the file
    stays pending (``index`` stops with this error, the daemon retries the file later)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        # The message the same failure gave when the model was loaded at start.
        message = str(cause) if isinstance(cause, ImgwatchError) else f"{type(cause).__name__}: {cause}"
        super().__init__(message if isinstance(cause, ImgwatchError) else f"cannot load the model: {message}")


class LazyExtractor:
    """:class:`~imgwatch.services.abc.Extractor` that builds its model with ``load`` on first use.

    ``signature`` is the one the model will have; after the load it is the model's own (the same
    key; its ``dtype`` is what the precision choice settled on). A ``signature`` whose ``dtype`` is
    ``auto`` (a new index) takes the precision class of the model that loads. ``on_loaded`` runs after
    the load, in the thread that loaded it, before any caller gets the model.
    """

    def __init__(
        self,
        signature: ExtractorSignature,
        load: Callable[[], Extractor],
        *,
        on_loaded: Callable[[Extractor], None] | None = None,
        queries_only: bool = False,
    ) -> None:
        self._signature = signature
        self._queries_only = queries_only
        """Whether its vectors are only queries, never stored: then the model may compute in the other
        precision class (a float query searches an int8 index as well), and the signature stays
        the index's, so lookups by the index's key (exact copies, ``check``) still match."""
        self._load = load
        self._on_loaded = on_loaded
        self._model: Extractor | None = None
        self._failure: BaseException | None = None
        """What the last load raised, if it failed (and nothing has loaded since)."""
        self._failed_at = 0.0
        self._closed = False
        # Held for the whole load: callers that arrive meanwhile wait for it and share its outcome.
        self._lock = threading.Lock()

    @property
    def signature(self) -> ExtractorSignature:
        model = self._model
        return model.signature if model is not None and not self._queries_only else self._signature

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def failure(self) -> ModelUnavailableError | None:
        """The error of the last load, if it failed (and nothing has loaded since)."""
        return ModelUnavailableError(self._failure) if self._failure is not None else None

    @property
    def images_embedded(self) -> int:
        model = self._model
        return model.images_embedded if model is not None else 0

    def model(self) -> Extractor:
        """The loaded model, loading it now if needed; :class:`ModelUnavailableError` if that fails."""
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            if self._closed:
                raise RuntimeError("extractor is closed")
            if self._failure is not None and time.monotonic() - self._failed_at < LOAD_RETRY_S:
                # A new exception per caller: one object raised in many threads would share a traceback.
                raise ModelUnavailableError(self._failure) from self._failure
            started = time.monotonic()
            try:
                model = self._load()
            except Exception as e:  # every caller waiting for this load gets it, as one clear error
                self._failure, self._failed_at = e, time.monotonic()
                # Info only: every caller gets it raised, and the command or the daemon reports it.
                log.info("loading the model failed: %s", ModelUnavailableError(e))
                raise ModelUnavailableError(e) from e
            expected = self._signature
            if expected.dtype == "auto" or self._queries_only:
                # A new index under ``precision = auto``: its class is what the model settled on
                # (int8, or float where int8 is unavailable here); it is recorded as the model loads.
                expected = replace(expected, dtype=model.signature.dtype)
            if model.signature.key != expected.key:
                model.close()
                if model.signature.precision_class != self._signature.precision_class:
                    # int8 asked for, but it fell back here (no C++ compiler, the fidelity gate):
                    # its float vectors must not go into an int8 index, nor int8 ones into a float one.
                    raise ImgwatchError(
                        f"the index holds {self._signature.precision_class} vectors, but the model "
                        f"loaded here makes {model.signature.precision_class} ones ({model.signature.dtype}; "
                        "the log says why int8 is not available): set precision to match the index, "
                        "or let `imgwatch reindex` move it"
                    )
                raise ImgwatchError(
                    f"the loaded model makes {model.signature.weights} vectors, not the expected "
                    f"{self._signature.weights}"
                )
            log.info("model loaded in %.1f s (%s)", time.monotonic() - started, model.signature.dtype)
            if self._on_loaded is not None:
                # Before anyone embeds with it: a new index's signature is written before its first vector.
                try:
                    self._on_loaded(model)
                except BaseException:
                    model.close()
                    raise
            self._model, self._failure = model, None
        return model

    def embed(self, data: bytes) -> Vector:
        return self.model().embed(data)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            model, self._model = self._model, None
        if model is not None:
            model.close()


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


def load_failure(extractor: Extractor) -> ModelUnavailableError | None:
    """Why ``extractor``'s model (or the model below its PCA projection) failed to load, if it did."""
    lazy = _lazy_below(extractor)
    return lazy.failure if lazy is not None else None


def model_loaded(extractor: Extractor) -> bool:
    """Whether ``extractor`` holds a loaded model (one that is not lazy always does; :class:`NoModel`
    never)."""
    if isinstance(extractor, NoModel):
        return False
    lazy = _lazy_below(extractor)
    return lazy.loaded if lazy is not None else True


def _lazy_below(extractor: Extractor) -> LazyExtractor | None:
    while not isinstance(extractor, LazyExtractor):
        base = getattr(extractor, "base", None)  # a ProjectedExtractor's model
        if base is None:
            return None
        extractor = base
    return extractor
