"""What the model is, without the model: the ``--weights`` setting parsed, and the signature of the
vectors it makes. Torch-free, so commands that only read the index (``status``, ``forget``,
``duplicates``) can check signatures without importing torch (seconds on a 2-core machine)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from imgwatch.errors import ImgwatchError, WeightsFileError
from imgwatch.services.abc import ExtractorSignature

MODEL = "torchvision.vgg16"
LAYER = "classifier.4 (fc7 after ReLU)"
DIMENSION = 4096
IMAGENET_IDENTITY = "imagenet1k_v1"
#: Bump whenever the output of :func:`imgwatch.services.images.prepare` changes for some input: it is
#: part of the signature.
PREPROCESSING_VERSION = "pil-exif-draft256-rgb-on-white-resize256-centercrop224-v1"


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``--weights`` value."""

    kind: str
    """``imagenet``, ``file`` or ``random``."""
    path: Path | None = None
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> WeightsSpec:
        if text == "imagenet":
            return cls("imagenet")
        if text.startswith("random:"):
            try:
                return cls("random", seed=int(text.removeprefix("random:")))
            except ValueError:
                raise ImgwatchError(
                    f"--weights {text!r}: random weights take an integer seed, e.g. random:0"
                ) from None
        return cls("file", path=Path(text).expanduser())

    def identity(self) -> str:
        """The weights part of the signature. Hashes a weights file, so callers should keep it."""
        if self.kind == "imagenet":
            return IMAGENET_IDENTITY
        if self.kind == "random":
            return f"random:{self.seed}"
        assert self.path is not None
        try:
            with self.path.open("rb") as f:
                return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise WeightsFileError(self.path, e.strerror or str(e)) from e


def signature_for(weights: WeightsSpec, weights_identity: str, dtype: str) -> ExtractorSignature:
    return ExtractorSignature(
        model=MODEL,
        weights=weights_identity,
        layer=LAYER,
        preprocessing=PREPROCESSING_VERSION,
        dimension=DIMENSION,
        dtype=dtype,
    )


#: What a float setting may be (``auto``'s float fallback and ``int8``'s are ``float``).
_FLOAT_SETTINGS = ("float", "fp32", "bf16", "fp16")


def following_index(configured: ExtractorSignature, stored: ExtractorSignature | None) -> ExtractorSignature:
    """``configured``, made with ``precision = auto``, in the precision class of the index it serves.

    ``auto`` settles an index's class once, when the index is made: moving an index made in float
    into int8 (or back) is a full re-extraction, so it happens only when the user sets a precision.
    """
    if configured.dtype != "auto" or stored is None:
        return configured
    return replace(configured, dtype="float" if stored.dtype == "auto" else stored.dtype)


def model_precision(setting: str, signature: ExtractorSignature) -> str:
    """The precision to build the model that makes ``signature``'s vectors in, given the ``precision``
    setting: int8 for an int8 index, a float one (the setting's, if it names one) for a float index,
    and the setting itself for a new index (``signature.dtype`` still ``auto``)."""
    if signature.dtype == "auto":
        return setting
    if signature.precision_class == "int8":
        return "int8"
    return setting if setting in _FLOAT_SETTINGS else "float"
