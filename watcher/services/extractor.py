"""VGG16 fc7 feature extractor: the classic VGG + Milvus image-search recipe, batched.

Callers in many threads hand over encoded images; each decodes its own image (in its own thread), and
one model thread runs whatever has gathered as a batch. While images keep coming, a batch waits at
most ``max_wait`` seconds to fill; an image that finds the model idle does not wait at all (a lone
search or a single dropped file), and the images that arrive while it runs form the next batch.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from threadpoolctl import threadpool_limits
from torch import nn

from imgwatch import allocator
from imgwatch.errors import ImgwatchError
from imgwatch.services.abc import ExtractorSignature, Vector
from imgwatch.services.cpu import cpus_we_may_run_on
from imgwatch.services.images import prepare
from imgwatch.services.int8 import Features, Fidelity, Int8UnavailableError, load_or_build

# The model's description lives where commands that never run it can import it without torch; its
# names stay importable from here too.
from imgwatch.services.model_spec import (
    DIMENSION,
    IMAGENET_IDENTITY,
    LAYER,
    MODEL,
    WeightsSpec,
    signature_for,
)
from imgwatch.services.precision import (
    cached_fidelity,
    choose_precision,
    fidelity_key,
    measure_bf16_speedup,
    record_fidelity,
)
from imgwatch.services.weights import (
    cache_dir,
    imagenet_state_dict,
    imagenet_weights_file,
    load_into,
    load_state_file,
    random_vgg16,
    vgg16_on_meta,
)

__all__ = [
    "DIMENSION",
    "FC7",
    "IMAGENET_IDENTITY",
    "LAYER",
    "MODEL",
    "PROBE_VERSION",
    "VGG16Extractor",
    "WeightsSpec",
    "build_vgg16",
    "imagenet_weights_file",
    "signature_for",
]

log = logging.getLogger(__name__)

#: Reduced precision is used only while its vectors stay this close to fp32's (cosine).
MIN_REDUCED_PRECISION_COSINE = 0.999
#: After this long without an image the model thread gives the memory it kept back (imgwatch.allocator).
IDLE_RELEASE_S = 2.0
#: ... and again this often while it stays idle.
IDLE_RELEASE_AGAIN_S = 60.0

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_vgg16(weights: WeightsSpec) -> nn.Module:
    """The VGG16 network with the requested weights, in eval mode, on the CPU, in fp32."""
    if weights.kind == "random":
        assert weights.seed is not None
        return random_vgg16(weights.seed)
    if weights.kind == "imagenet":
        return load_into(vgg16_on_meta(), imagenet_state_dict(), imagenet_weights_file())
    assert weights.path is not None
    return load_into(vgg16_on_meta(), load_state_file(weights.path), weights.path)


def _use_the_cpus_we_may_run_on() -> None:
    """One intra-op thread per CPU this process may run on, and one BLAS thread for numpy.

    torch defaults to the machine's physical cores, ignoring the affinity mask: it would then run
    more threads than CPUs and lose throughput to preemption. Decoding happens in the handler
    threads, which mostly wait on the model, so they need no CPUs reserved for them.

    numpy's OpenBLAS keeps its idle threads spinning for a while after each call, and next to the
    model they take a core from every forward pass: a warm search measured 0.18 s with them and
    0.12 s without. numpy's work beside the model (PCA projections, Milvus Lite's distances) is
    small, so one thread does it; :meth:`PCATransform.fit` widens the limit while it fits.
    """
    allowed = cpus_we_may_run_on()
    if torch.get_num_threads() != allowed:
        log.debug(
            "torch intra-op threads: %d -> %d (CPUs this process may use)", torch.get_num_threads(), allowed
        )
        torch.set_num_threads(allowed)
    threadpool_limits(limits=1, user_api="blas")


def choose_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ImgwatchError("--device cuda was requested but torch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class FC7(nn.Module):
    """VGG16 up to and including the ReLU after fc7: 4096 non-negative activations."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.features = cast(nn.Module, vgg.features)
        self.avgpool = cast(nn.Module, vgg.avgpool)
        self.head = cast(nn.Sequential, vgg.classifier)[:5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """fc6 and fc7 on the convolutions' output (which int8 computes by other means)."""
        return cast(torch.Tensor, self.head(torch.flatten(self.avgpool(features), 1)))


class VGG16Extractor:
    """The real extractor service (see :class:`imgwatch.services.abc.Extractor`)."""

    def __init__(
        self,
        weights: WeightsSpec,
        *,
        weights_identity: str | None = None,
        device: str = "auto",
        precision: str = "float",
        batch_size: int = 16,
        max_pixels: int = 89_478_485,
        max_wait: float = 0.01,
        compile_cache: Path | None = None,
    ) -> None:
        """``precision`` as in the settings, but defaulting to ``float``: ``auto`` (int8 where it pays)
        quantizes and compiles for a minute, which the settings' default asks for and a model made
        in-process should not do unasked. ``compile_cache`` keeps the compiled int8 model (default:
        the user's cache dir)."""
        # max_pixels is enforced per file in images.prepare, before decoding; Pillow's own global
        # limit would otherwise warn (or fail) first with a message that names no file.
        Image.MAX_IMAGE_PIXELS = None
        self._device = choose_device(device)
        if self._device.type == "cpu":
            _use_the_cpus_we_may_run_on()
        self._max_pixels = max_pixels
        self._batch_size = batch_size
        self._max_wait = max_wait
        self._model = FC7(build_vgg16(weights)).to(self._device)
        self._mean = torch.tensor(_MEAN, device=self._device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(_STD, device=self._device).view(1, 3, 1, 1) * 255.0
        self._dtype = torch.float32
        self._int8: Features | None = None
        self._int8_fidelity: Fidelity | None = None
        """The compiled int8 convolutions, when int8 is used; fc6/fc7 stay in ``self._model``."""
        identity = weights_identity or weights.identity()
        wanted = choose_precision(precision, self._device, self._bf16_speedup)
        required = precision not in ("auto", "float")
        if wanted == "int8":
            self._int8 = self._int8_features(identity, compile_cache or cache_dir() / "compile-cache")
            if self._int8 is None:
                # int8 is an optimisation that may be unavailable here (no compiler, a failed gate):
                # the float precision ``float`` would pick instead, never an error.
                wanted, required = choose_precision("float", self._device, self._bf16_speedup), False
        if wanted not in ("fp32", "int8"):
            self._switch_precision(wanted, identity, required=required)
        self._signature = signature_for(weights, identity, "int8" if self._int8 else _name_of(self._dtype))
        self._embedded = 0
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._busy = False
        """Whether images arrived while the last batch ran: then more are on their way."""
        self._count_lock = threading.Lock()
        self._requests: queue.Queue[tuple[npt.NDArray[np.uint8], Future[Vector]] | None] = queue.Queue()
        self._closed = False
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._serve_batches, name="imgwatch-model", daemon=True)
        self._thread.start()

    @property
    def signature(self) -> ExtractorSignature:
        return self._signature

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def images_embedded(self) -> int:
        return self._embedded

    @property
    def int8_fidelity(self) -> Fidelity | None:
        """The int8 gate's numbers when the model computes in int8, else None."""
        return self._int8_fidelity

    @property
    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size the model thread has run."""
        with self._count_lock:
            return dict(self._batch_sizes)

    def embed(self, data: bytes) -> Vector:
        return self.embed_prepared(prepare(data, self._max_pixels))

    def embed_prepared(self, pixels: npt.NDArray[np.uint8]) -> Vector:
        future: Future[Vector] = Future()
        with self._closing:
            if self._closed:
                raise RuntimeError("extractor is closed")
            self._requests.put((pixels, future))
        return future.result()

    def forward(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Run a ``(N, 224, 224, 3)`` uint8 batch through the model; rows are L2-normalised."""
        vectors = self._infer(batch)
        with self._count_lock:
            self._embedded += len(batch)
        return vectors

    def _infer(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            x = self._prepared(batch)
            features = (self._model.from_features(self._int8(x)) if self._int8 else self._model(x)).float()
            features = nn.functional.normalize(features, dim=1)
        return features.cpu().numpy()

    def _prepared(self, batch: npt.NDArray[np.uint8]) -> torch.Tensor:
        """A uint8 NHWC batch as the model's normalised, channels-last input in its dtype."""
        x = torch.from_numpy(batch).to(self._device).permute(0, 3, 1, 2).float()
        return ((x - self._mean) / self._std).to(self._dtype).contiguous(memory_format=torch.channels_last)

    def close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._requests.put(None)
        self._thread.join()
        # Requests queued behind the sentinel would wait forever: fail them.
        while not self._requests.empty():
            item = self._requests.get_nowait()
            if item is not None:
                item[1].set_exception(RuntimeError("extractor is closed"))

    def _serve_batches(self) -> None:
        wait = IDLE_RELEASE_S
        while True:
            try:
                first = self._requests.get(timeout=wait)
            except queue.Empty:
                # Idle: the buffers kept for the next batch (imgwatch.allocator) go back to the system,
                # and, while idle, what the rest of a daemon freed meanwhile (Milvus Lite, scans).
                allocator.release()
                wait = IDLE_RELEASE_AGAIN_S
                continue
            wait = IDLE_RELEASE_S
            if first is None:
                return
            batch = [first]
            stop = self._gather(batch)
            self._run(batch)
            if stop:
                return

    def _gather(self, batch: list[tuple[npt.NDArray[np.uint8], Future[Vector]]]) -> bool:
        """Add waiting requests to ``batch`` until it is full or ``max_wait`` passes; True on close.

        Only a busy model waits for company. An image that finds it idle would wait for nobody
        (a lone search, one dropped file); images that arrive while it runs mark it busy.
        """
        deadline = time.monotonic() + (self._max_wait if self._busy else 0.0)
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _run(self, batch: list[tuple[npt.NDArray[np.uint8], Future[Vector]]]) -> None:
        with self._count_lock:
            self._batch_sizes[len(batch)] += 1
        try:
            vectors = self.forward(np.stack([pixels for pixels, _ in batch]))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting caller
            for _, future in batch:
                future.set_exception(e)
            return
        finally:
            self._busy = not self._requests.empty()
        for (_, future), vector in zip(batch, vectors, strict=True):
            future.set_result(vector)

    def _bf16_speedup(self) -> float:
        return measure_bf16_speedup(self._model, self._prepared(_probe_batch()))

    def _int8_features(self, weights_identity: str, cache: Path) -> Features | None:
        """The int8 convolutions (from ``cache``, or quantized, gated and compiled into it), or None
        with one warning saying why not."""
        if self._device.type != "cpu":
            log.warning("staying in float on %s: int8 is implemented for CPUs only", self._device)
            return None
        try:
            built = load_or_build(self._model, self._prepared, weights_identity, cache)
        except Int8UnavailableError as e:
            log.warning("staying in float on this CPU: %s", e)
            return None
        self._int8_fidelity = built.fidelity
        return built.features

    def _switch_precision(self, name: str, weights_identity: str, *, required: bool) -> None:
        """Move the model to ``name`` precision if its vectors stay within cosine 0.999 of fp32.

        On a CPU the cosine is measured once per machine, weights and torch version, then read from
        the user's cache dir (see :mod:`imgwatch.services.precision`)."""
        key = fidelity_key(weights_identity, name, PROBE_VERSION) if self._device.type == "cpu" else None
        cosine = cached_fidelity(key) if key is not None else None
        reason = f"cosine to fp32 {cosine:.5f}" if cosine is not None else ""
        reference = self._infer(_probe_batch()) if cosine is None else None
        self._model.to(_DTYPES[name])
        self._dtype = _DTYPES[name]
        if reference is not None:
            try:
                reduced = self._infer(_probe_batch())
                cosine = float(np.min(np.sum(reference * reduced, axis=1)))
            except RuntimeError as e:
                cosine, reason = 0.0, str(e)
            else:
                reason = f"cosine to fp32 {cosine:.5f}"
                if key is not None:
                    record_fidelity(key, cosine)
        assert cosine is not None
        if cosine >= MIN_REDUCED_PRECISION_COSINE:
            log.debug("using %s on %s (%s)", name, self._device, reason)
            return
        if required:
            raise ImgwatchError(f"precision {name} on {self._device} is not usable here: {reason}")
        log.warning("staying with fp32 on %s: %s is not accurate enough (%s)", self._device, name, reason)
        self._model.to(torch.float32)
        self._dtype = torch.float32


#: Bump when :func:`_probe_batch` changes: cached fidelity results were measured on its images.
PROBE_VERSION = "sin-noise-224-v1"


def _probe_batch() -> npt.NDArray[np.uint8]:
    """Two fixed, textured images: enough to expose a precision problem, cheap to run."""
    rng = np.random.default_rng(12345)
    ys, xs = np.mgrid[0:224, 0:224]
    smooth = (127 + 100 * np.sin(xs / 17.0)[..., None] * np.cos(ys / 23.0)[..., None]) * np.ones(3)
    noisy = rng.integers(0, 256, size=(224, 224, 3))
    return np.stack([smooth, noisy]).astype(np.uint8)


def _name_of(dtype: torch.dtype) -> str:
    return next(name for name, value in _DTYPES.items() if value == dtype)
