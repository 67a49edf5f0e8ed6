"""int8 VGG16 (issue 16) on real parts: the quantized and compiled model, its gate, its cache, its
fallback without a compiler, and the signature class that keeps int8 vectors out of float indexes.

Quantizing and compiling cost about a minute on 2 cores: the module quantizes and compiles once
(``int8_model``), and the other tests reuse that package or stop before compiling.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from imgwatch.config import Settings
from imgwatch.errors import ExtractorMismatchError
from imgwatch.reindex import Mode, Reindexer
from imgwatch.services.abc import ExtractorSignature, FileState
from imgwatch.services.build import open_services, stored_signature
from imgwatch.services.catalog import open_catalog
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec, signature_for
from imgwatch.services.int8 import (
    MIN_AGREEMENT,
    MIN_COSINE,
    Int8UnavailableError,
    load_or_build,
    photo_crops,
)
from imgwatch.services.model_spec import following_index, model_precision
from imgwatch.services.precision import choose_precision, int8_may_pay
from tests.conftest import REPO, WEIGHTS, index, write_photo
from tests.harness import clean_env, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("int8")]

#: ExtractorSignature.key of random:0 fp32 vectors as computed before precision classes existed
#: (main at d23693d): the key every existing index's rows carry.
KEY_BEFORE_CLASSES = "ec64108ff5855aea"


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture(scope="module")
def fp32() -> Iterator[VGG16Extractor]:
    model = VGG16Extractor(WeightsSpec.parse(WEIGHTS), precision="fp32", batch_size=8)
    yield model
    model.close()


@pytest.fixture(scope="module")
def int8_model(compile_cache: Path) -> Iterator[VGG16Extractor]:
    """The int8 model, quantized, gated and compiled into ``compile_cache`` (once for the module)."""
    model = VGG16Extractor(
        WeightsSpec.parse(WEIGHTS), precision="int8", batch_size=8, compile_cache=compile_cache
    )
    if model.signature.dtype != "int8":
        model.close()
        # Its warning (in the log) says why: no C++ compiler, or the gate refused.
        reason = "int8 is not available on this machine (see the warning logged above)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield model
    model.close()


def _start(cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A fresh process that builds an int8 extractor on ``cache`` and embeds three generated photos:
    prints its signature and vectors as JSON; logs on stderr."""
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        from pathlib import Path
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
        from imgwatch.services.extractor import VGG16Extractor, WeightsSpec
        from imgwatch.services.int8 import photo_crops
        model = VGG16Extractor(
            WeightsSpec.parse({WEIGHTS!r}), precision="int8", batch_size=8, compile_cache=Path({str(cache)!r})
        )
        vectors = model.forward(photo_crops(range(3)))
        model.close()
        signature = model.signature
        print(json.dumps({{"dtype": signature.dtype, "key": signature.key, "vectors": vectors.tolist()}}))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=(env or clean_env()),
        capture_output=True,
        text=True,
        check=False,
    )


def test_int8_vectors_are_normalised_4096_d_and_pass_the_gate_against_fp32(
    int8_model: VGG16Extractor, fp32: VGG16Extractor, tmp_path: Path
) -> None:
    assert int8_model.signature.dtype == "int8"
    assert int8_model.signature.precision_class == "int8"
    # Images neither calibration nor the gate saw, through files and the real decoding.
    vectors, reference = [], []
    for seed in range(3):
        path = tmp_path / f"photo{seed}.jpg"
        write_photo(path, 900 + seed, size=(64, 48))
        vectors.append(int8_model.embed(path.read_bytes()))
        reference.append(fp32.embed(path.read_bytes()))
    got, want = np.stack(vectors), np.stack(reference)
    assert got.shape == (3, 4096)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * want, axis=1)
    assert cosines.min() >= MIN_COSINE, cosines
    # Not fp32 under another name: quantization changes the vectors a little.
    assert cosines.max() < 0.99999, cosines


def test_the_gate_refuses_a_model_calibrated_on_one_flat_grey_image(
    fp32: VGG16Extractor, tmp_path: Path
) -> None:
    grey = np.full((1, 224, 224, 3), 128, dtype=np.uint8)
    cache = tmp_path / "cache"
    with pytest.raises(Int8UnavailableError, match="not faithful enough") as refused:
        load_or_build(fp32._model, fp32._prepared, WEIGHTS, cache, calibration=grey)
    # It stopped before compiling: no package, and the refusal with its numbers is recorded.
    assert not list(cache.glob("*.pt2"))
    [record] = cache.glob("*.json")
    saved = json.loads(record.read_text())
    assert saved["refused"] is True
    measured = saved["fidelity"]
    assert measured["worst_cosine"] < MIN_COSINE or measured["agreement"] < MIN_AGREEMENT
    assert f"{measured['worst_cosine']:.4f}" in str(refused.value)
    # A later start reads the verdict and refuses at once, without quantizing again.
    before = record.stat().st_mtime_ns
    with pytest.raises(Int8UnavailableError, match="verdict recorded"):
        load_or_build(fp32._model, fp32._prepared, WEIGHTS, cache, calibration=grey)
    assert record.stat().st_mtime_ns == before


def test_a_second_process_start_reuses_the_compiled_package(
    int8_model: VGG16Extractor, compile_cache: Path
) -> None:
    [package] = compile_cache.glob("*.pt2")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in compile_cache.iterdir()}
    started = _start(compile_cache)
    assert started.returncode == 0, started.stderr
    assert f"reusing the compiled model {package}" in started.stderr
    assert "quantizing" not in started.stderr and "compiling" not in started.stderr
    # The runner that frees the GIL was built beside the package, once, and is reused too.
    assert list(compile_cache.glob("aoti-runner-*.so"))
    assert "building the runner" not in started.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in compile_cache.iterdir()} == before
    result = json.loads(started.stdout)
    assert result["dtype"] == "int8" and result["key"] == int8_model.signature.key
    # The same compiled model as this process's: the same vectors.
    here = int8_model.forward(photo_crops(range(3)))
    np.testing.assert_allclose(np.array(result["vectors"], dtype=np.float32), here, atol=1e-4)


def test_without_a_cxx_compiler_int8_falls_back_to_float_with_one_warning(tmp_path: Path) -> None:
    env = clean_env() | {"CXX": str(tmp_path / "no-such-c++"), "CC": str(tmp_path / "no-such-cc")}
    started = _start(tmp_path / "cache", env)
    assert started.returncode == 0, started.stderr
    warnings = [line for line in started.stderr.splitlines() if line.startswith("WARNING imgwatch")]
    assert len(warnings) == 1, started.stderr
    assert "staying in float on this CPU: cannot compile the int8 model: no C++ compiler" in warnings[0]
    result = json.loads(started.stdout)
    assert result["dtype"] in ("fp32", "bf16")
    assert result["key"] == signature_for(WeightsSpec.parse(WEIGHTS), WEIGHTS, result["dtype"]).key
    np.testing.assert_allclose(np.linalg.norm(np.array(result["vectors"]), axis=1), 1.0, atol=1e-5)
    assert not list((tmp_path / "cache").glob("*.pt2"))


def test_the_signature_key_carries_the_precision_class() -> None:
    spec = WeightsSpec.parse(WEIGHTS)
    keys = {
        dtype: signature_for(spec, WEIGHTS, dtype).key for dtype in ("fp32", "bf16", "fp16", "auto", "int8")
    }
    assert keys["fp32"] == keys["bf16"] == keys["fp16"] == keys["auto"] == KEY_BEFORE_CLASSES
    assert keys["int8"] != keys["fp32"]
    float_sig, int8_sig = signature_for(spec, WEIGHTS, "fp32"), signature_for(spec, WEIGHTS, "int8")
    assert float_sig.differences(int8_sig) == ["precision_class: index has 'float', configured 'int8'"]
    # A projection keeps the class apart too.
    assert float_sig.projected(256, "v1").key != int8_sig.projected(256, "v1").key


def test_a_signature_recorded_before_precision_classes_reads_as_float() -> None:
    # As main (d23693d) wrote it into the catalog's meta table: no precision class anywhere.
    recorded = (
        '{"dimension": 4096, "dtype": "bf16", "layer": "classifier.4 (fc7 after ReLU)", '
        '"model": "torchvision.vgg16", "pca": "", "preprocessing": '
        '"pil-exif-draft256-rgb-on-white-resize256-centercrop224-v1", "weights": "random:0"}'
    )
    signature = ExtractorSignature.from_json(recorded)
    assert signature.precision_class == "float"
    assert signature.key == KEY_BEFORE_CLASSES


def test_switching_an_index_to_int8_is_a_shadow_reindex_never_a_mix(
    settings: Settings, fp32: VGG16Extractor, int8_model: VGG16Extractor, photos: Path
) -> None:
    with open_services(settings, command="test", extractor=fp32) as services:
        index(services.ctx, photos)
        old_collection = services.ctx.vectors.collection
    # The current users' case first: a float index opened with another float precision needs no reindex.
    with open_services(settings.replace(precision="bf16"), command="test", extractor=fp32) as services:
        assert Reindexer(services).pending() is None

    switched = settings.replace(precision="int8")
    # `index` would write int8 vectors into it: refused, as for other weights.
    with (
        pytest.raises(ExtractorMismatchError, match="precision_class"),
        open_services(switched, command="index", extractors=[fp32, int8_model]),
    ):
        pass
    with open_services(switched, command="test", extractors=[fp32, int8_model]) as services:
        assert services.ctx.extractor is fp32  # served as it is until the new collection is complete
        reindexer = Reindexer(services, batch=4)
        step = reindexer.pending()
        assert step is not None and step.mode is Mode.EXTRACT
        before = int8_model.images_embedded
        reindexer.run()
        assert services.ctx.extractor is int8_model
        assert services.ctx.vectors.collection != old_collection
        stored = stored_signature(services.catalog)
        assert stored is not None and stored.precision_class == "int8"
        records = services.catalog.ids_with_vectors()
        assert {r.path for r in records.values()} == {str(p) for p in photos.rglob("*.jpg")}
        # Every vector was made again by the int8 model: none of the float ones was kept.
        assert {r.signature for r in records.values()} == {int8_model.signature.key}
        assert int8_model.images_embedded - before >= len(records)
        assert reindexer.pending() is None


# ---- precision = auto: int8 for a new index, an existing index keeps its class ----------------------


def _imgwatch(
    data_dir: Path, precision: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``imgwatch ARGS`` as a real process on ``data_dir`` with ``precision``; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "imgwatch", *args],
        env=cli_env(data_dir) | {"IMGWATCH_PRECISION": precision} | (env or {}),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done


def _index_with(data_dir: Path, photos: Path, precision: str, env: dict[str, str] | None = None) -> str:
    """``imgwatch index photos`` with ``precision``; its stderr."""
    return _imgwatch(data_dir, precision, "index", str(photos), "--log-level", "info", env=env).stderr


def _stored(data_dir: Path) -> ExtractorSignature:
    catalog = open_catalog(data_dir / "catalog.sqlite3")
    try:
        signature = stored_signature(catalog)
        assert signature is not None
        assert catalog.counts()[FileState.INDEXED] == len(catalog.ids_with_vectors())
        return signature
    finally:
        catalog.close()


def test_auto_makes_a_new_index_int8_and_keeps_an_existing_float_index_float(
    int8_model: VGG16Extractor, compile_cache: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    for seed in range(3):
        write_photo(photos / f"{seed}.jpg", seed, size=(64, 48))
        for copy in range(4):  # copies in flight while the model loads share its one run
            (photos / "copies").mkdir(exist_ok=True)
            shutil.copyfile(photos / f"{seed}.jpg", photos / "copies" / f"{seed}-{copy}.jpg")
    # A new data dir whose compile cache holds this module's package: the CLI must find it reusable
    # (same weights, calibration, CPU and torch), so this run does not quantize or compile again.
    new = tmp_path / "new"
    shutil.copytree(compile_cache, new / "compile-cache")
    # One image per batch and six workers: copies start while their content's first run still goes on,
    # some before the model loaded, some after.
    done = _imgwatch(
        new, "auto", "index", str(photos), "--log-level", "info", "--json", env={"IMGWATCH_BATCH_SIZE": "1"}
    )
    assert "reusing the compiled model" in done.stderr, done.stderr
    summary = json.loads(done.stdout)
    # One run per content, although the new index's signature settles (int8) only once the model loaded.
    assert (summary["added"], summary["model_runs"]) == (15, 3), summary
    made = _stored(new)
    assert made.dtype == "int8" and made.key == int8_model.signature.key
    # A one-shot search of the int8 index computes its query in float: with the package gone (as
    # after a torch upgrade), it neither quantizes nor compiles, and still finds the image first.
    shutil.rmtree(new / "compile-cache")
    found = _imgwatch(new, "auto", "search", str(photos / "1.jpg"), "-k", "1", "--json")
    [match] = json.loads(found.stdout)["results"]
    same = {str(photos / "1.jpg"), *(str(photos / "copies" / f"1-{c}.jpg") for c in range(4))}
    assert match["path"] in same
    assert match["score"] > 0.99, found.stdout
    assert not (new / "compile-cache").exists(), found.stderr

    # An index made in float stays float under auto: no int8 package is built, no reindex is due.
    shutil.rmtree(photos / "copies")
    old = tmp_path / "old"
    _index_with(old, photos, "float")
    write_photo(photos / "3.jpg", 3, size=(64, 48))
    stderr = _index_with(old, photos, "auto")
    kept = _stored(old)
    assert kept.precision_class == "float" and kept.key == KEY_BEFORE_CLASSES
    assert "int8" not in stderr, stderr
    assert not (old / "compile-cache").exists() or not list((old / "compile-cache").glob("*.pt2"))
    settings = Settings(data_dir=old, weights=WEIGHTS, precision="auto")
    with open_services(settings, command="test", model=False) as services:
        assert len(services.catalog.ids_with_vectors()) == 4
        assert Reindexer(services).pending() is None


def test_auto_without_a_cxx_compiler_makes_a_float_index(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_photo(photos / "a.jpg", 1, size=(64, 48))
    no_compiler = {"CXX": str(tmp_path / "no-such-c++"), "CC": str(tmp_path / "no-such-cc")}
    stderr = _index_with(tmp_path / "data", photos, "auto", no_compiler)
    assert "staying in float on this CPU: cannot compile the int8 model: no C++ compiler" in stderr, stderr
    assert _stored(tmp_path / "data").precision_class == "float"


def test_auto_follows_the_index_class_and_the_model_is_built_for_the_index() -> None:
    spec = WeightsSpec.parse(WEIGHTS)
    auto, fp32_sig, int8_sig = (signature_for(spec, WEIGHTS, d) for d in ("auto", "fp32", "int8"))
    assert following_index(auto, None) == auto
    assert following_index(auto, fp32_sig) == fp32_sig
    # A target recorded as "auto" by an older reindex is a float index, never a new one.
    assert following_index(auto, auto).dtype == "float"
    assert following_index(auto, int8_sig) == int8_sig
    # An explicit precision is not bent to the index: a mismatch is the reindex's business.
    assert following_index(fp32_sig, int8_sig) == fp32_sig
    assert model_precision("auto", auto) == "auto"
    assert model_precision("auto", fp32_sig) == "float"
    assert model_precision("auto", int8_sig) == "int8"
    assert model_precision("int8", fp32_sig) == "float"  # serving a float index while moving to int8
    assert model_precision("bf16", fp32_sig) == "bf16"
    assert model_precision("fp32", int8_sig) == "int8"  # serving an int8 index while moving to float
    not_measured = lambda: pytest.fail("auto on an int8 CPU, or on CUDA, measures nothing")  # noqa: E731
    if int8_may_pay():
        assert choose_precision("auto", torch.device("cpu"), not_measured) == "int8"
    assert choose_precision("auto", torch.device("cuda"), not_measured) == "fp16"
    assert choose_precision("float", torch.device("cuda"), not_measured) == "fp16"


def test_a_stored_auto_signature_reads_as_float_and_a_shared_collection_stays_float(tmp_path: Path) -> None:
    from imgwatch.services.build import SIGNATURE_META_KEY, configured_signature

    spec = WeightsSpec.parse(WEIGHTS)
    catalog = open_catalog(tmp_path / "catalog.sqlite3")
    try:
        catalog.set_meta(SIGNATURE_META_KEY, signature_for(spec, WEIGHTS, "auto").to_json())
        stored = stored_signature(catalog)
    finally:
        catalog.close()
    assert stored is not None and stored.dtype == "float" and stored.key == KEY_BEFORE_CLASSES
    assert model_precision("auto", stored) == "float"
    shared = Settings(data_dir=tmp_path, weights=WEIGHTS, precision="auto", node="a")
    assert configured_signature(shared).dtype == "float"
    assert configured_signature(shared.replace(precision="int8")).dtype == "int8"


NOTICES_SCRIPT = """
import sys
if sys.argv[1] == "imgwatch":
    import imgwatch.services.int8
import torch.utils.cpp_extension
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
torch.utils.cpp_extension._find_cuda_home()
"""


def test_building_int8_prints_none_of_torchs_notices() -> None:
    """README's first command builds int8, and torch's two notices then were all it printed: torchao
    registering an enum the deprecated way, and torch's CUDA build finding no CUDA runtime. The same
    imports and the same CUDA lookup that the build makes, without and with imgwatch's int8 module."""

    def stderr(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", NOTICES_SCRIPT, mode],
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stderr

    bare = stderr("bare")
    if "Enum subclass" not in bare and "No CUDA runtime" not in bare:
        pytest.skip("this torch prints neither notice")
    assert stderr("imgwatch") == ""
