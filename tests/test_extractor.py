"""The extractor: weights handling, signatures, precision, and refusing to mix extractors."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from imgwatch.config import Settings
from imgwatch.errors import ExtractorMismatchError, WeightsFileError, WeightsUnavailableError
from imgwatch.samples import photo
from imgwatch.services.build import configured_signature, open_context
from imgwatch.services.extractor import (
    DIMENSION,
    VGG16Extractor,
    WeightsSpec,
    build_vgg16,
    imagenet_weights_file,
)
from imgwatch.services.images import prepare
from imgwatch.services.precision import cpu_supports_bf16
from tests.conftest import OpenContext, index, jpeg_bytes


def test_signature_names_model_weights_layer_preprocessing_dimension_dtype(extractor: VGG16Extractor) -> None:
    signature = extractor.signature

    assert signature.model == "torchvision.vgg16"
    assert signature.weights == "random:0"
    assert "fc7" in signature.layer
    assert signature.dimension == DIMENSION == 4096
    assert signature.dtype in ("fp32", "bf16")
    assert signature.preprocessing


def test_vectors_are_4096_d_unit_length_and_non_negative(extractor: VGG16Extractor) -> None:
    vector = extractor.embed(jpeg_bytes(photo(1)))

    assert vector.shape == (4096,) and vector.dtype == np.float32
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    assert float(vector.min()) >= 0.0  # taken after fc7's ReLU


def test_random_weights_are_deterministic_per_seed() -> None:
    a, b, c = (
        build_vgg16(WeightsSpec.parse("random:3")),
        build_vgg16(WeightsSpec.parse("random:3")),
        build_vgg16(WeightsSpec.parse("random:4")),
    )
    first_a, first_b, first_c = (next(iter(m.state_dict().values())) for m in (a, b, c))
    assert torch.equal(first_a, first_b)
    assert not torch.equal(first_a, first_c)


def test_weights_file_loads_and_gives_the_same_vectors(tmp_path: Path, extractor: VGG16Extractor) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(build_vgg16(WeightsSpec.parse("random:0")).state_dict(), path)
    data = jpeg_bytes(photo(5))

    from_file = VGG16Extractor(WeightsSpec.parse(str(path)), batch_size=2)
    try:
        assert from_file.signature.weights.startswith("sha256:")
        assert float(from_file.embed(data) @ extractor.embed(data)) == pytest.approx(1.0, abs=1e-3)
    finally:
        from_file.close()


def test_a_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.pth"
    bogus.write_bytes(b"definitely not a pickle")

    with pytest.raises(WeightsFileError, match=r"weights\.pth"):
        build_vgg16(WeightsSpec.parse(str(bogus)))
    with pytest.raises(WeightsFileError, match="no such file"):
        build_vgg16(WeightsSpec.parse(str(tmp_path / "missing.pth")))


def test_missing_imagenet_weights_stop_with_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty torch cache, and every download attempt pointed at a closed local port: the situation
    # of a machine without internet, made certain even on one that has it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    with pytest.raises(WeightsUnavailableError) as caught:
        build_vgg16(WeightsSpec.parse("imagenet"))

    message = str(caught.value)
    assert str(imagenet_weights_file()) in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "--weights PATH" in message
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth").exists()


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_stays_within_cosine_0999_of_fp32(extractor: VGG16Extractor) -> None:
    fp32 = VGG16Extractor(WeightsSpec.parse("random:0"), precision="fp32", batch_size=4)
    bf16 = VGG16Extractor(WeightsSpec.parse("random:0"), precision="bf16", batch_size=4)
    try:
        assert (fp32.signature.dtype, bf16.signature.dtype) == ("fp32", "bf16")
        assert fp32.signature.key == bf16.signature.key
        for seed in range(4):
            data = jpeg_bytes(photo(seed))
            assert float(fp32.embed(data) @ bf16.embed(data)) >= 0.999
    finally:
        fp32.close()
        bf16.close()


def test_index_refuses_a_changed_extractor_and_says_how_to_migrate(
    open_ctx: OpenContext, settings: Settings, photos: Path
) -> None:
    with open_ctx() as ctx:
        index(ctx, photos)
    other = Settings(data_dir=settings.data_dir, weights="random:1")

    with pytest.raises(ExtractorMismatchError) as caught, open_context(other, command="index"):
        pass

    message = str(caught.value)
    assert "weights: index has 'random:0', configured 'random:1'" in message
    assert "imgwatch reindex" in message
    assert "imgwatch index --rebuild" in message
    assert configured_signature(other).key != configured_signature(settings).key


def test_rebuild_re_extracts_everything(open_ctx: OpenContext, photos: Path) -> None:
    with open_ctx() as ctx:
        index(ctx, photos)
    with open_ctx(rebuild=True) as ctx:
        before = ctx.extractor.images_embedded
        summary = index(ctx, photos)
        assert summary.updated + summary.added == 8
        assert ctx.extractor.images_embedded == before + 8
        assert ctx.vectors.count() == 8


def test_a_lone_image_does_not_wait_for_a_batch_to_fill() -> None:
    # A minute's wait for company would show: a lone search or dropped file must not pay it.
    patient = VGG16Extractor(WeightsSpec.parse("random:0"), batch_size=8, max_wait=60.0)
    try:
        started = time.monotonic()
        patient.embed(jpeg_bytes(photo(1)))
        assert time.monotonic() - started < 30
        assert patient.batch_sizes == {1: 1}
    finally:
        patient.close()


def test_images_that_arrive_while_the_model_runs_share_batches(extractor: VGG16Extractor) -> None:
    pixels = [prepare(jpeg_bytes(photo(seed)), 10**8) for seed in range(24)]
    before = extractor.batch_sizes

    with ThreadPoolExecutor(max_workers=24) as pool:
        vectors = list(pool.map(extractor.embed_prepared, pixels))

    after = extractor.batch_sizes
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in ran.items()) == 24
    assert max(size for size, count in ran.items() if count) > 1
    for one, seed in ((vectors[3], 3), (vectors[17], 17)):
        assert float(one @ extractor.embed_prepared(pixels[seed])) == pytest.approx(1.0, abs=1e-3)


def test_a_cpu_model_keeps_numpy_to_one_blas_thread() -> None:
    # Idle OpenBLAS threads spin after each numpy call and take cores from the model's forward passes.
    # A model of its own: the shared one may predate a BLAS loaded since (Milvus Lite's faiss brings
    # one), while services open the store before the model.
    from threadpoolctl import threadpool_info

    model = VGG16Extractor(WeightsSpec.parse("random:0"), precision="fp32", batch_size=1)
    try:
        assert model.device.type == "cpu"
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas), blas
    finally:
        model.close()
