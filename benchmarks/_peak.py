"""The CPU's measured peak per arithmetic, shared by ``profile_model.py`` and ``ingest.py``.

Each peak is the better of a 4096 x 4096 matrix multiply and one VGG16 conv4 layer (3x3, 256 -> 512
channels, 28 x 28, batch 16) in the kernel the model's own layers take, timed over a few windows:
- fp32 and bf16: ``torch.mm`` and ``nn.Conv2d`` in channels-last (oneDNN);
- int8: ``torch._int_mm`` (int8 x int8 -> int32) and ``torch.ops.onednn.qconv2d_pointwise`` with
  u8 activations and s8 per-channel weights, the very op Inductor's compiled int8 convolutions call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

GFLOP_PER_IMAGE = 30.9
"""VGG16 convolutions + fc6 + fc7 at 224x224 (2 FLOP per multiply-add); GOP in int8."""

_SIZE = 4096
_CONV = {"batch": 16, "in": 256, "out": 512, "side": 28}
_CONV_FLOP = 2 * _CONV["batch"] * _CONV["side"] ** 2 * _CONV["out"] * _CONV["in"] * 9


def best_rate(run: Callable[[], object], flop: float, seconds: float = 1.2, tries: int = 3) -> float:
    """GFLOP/s of the fastest of ``tries`` timed windows (a shared machine only ever slows a window)."""
    run()
    best = 0.0
    for _ in range(tries):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run()
            runs += 1
        best = max(best, flop * runs / (time.perf_counter() - started) / 1e9)
    return best


def peak_gflops(dtype: torch.dtype, seconds: float) -> dict[str, float]:
    """fp32 or bf16 GFLOP/s of a matrix multiply and of a conv4 layer."""
    a, b = torch.randn(_SIZE, _SIZE).to(dtype), torch.randn(_SIZE, _SIZE).to(dtype)
    conv = torch.nn.Conv2d(_CONV["in"], _CONV["out"], 3, padding=1)
    conv = conv.to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(_CONV["batch"], _CONV["in"], _CONV["side"], _CONV["side"]).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return {
            "matmul": round(best_rate(lambda: torch.mm(a, b), 2 * _SIZE**3, seconds), 1),
            "conv": round(best_rate(lambda: conv(x), _CONV_FLOP, seconds), 1),
        }


def peak_int8_gops(seconds: float) -> dict[str, float]:
    """int8 GOP/s of ``torch._int_mm`` and of oneDNN's quantized conv4 layer (fused ReLU, u8 out); a
    kernel this torch build lacks is left out."""
    rates: dict[str, float] = {}
    a = torch.randint(-128, 128, (_SIZE, _SIZE), dtype=torch.int8)
    b = torch.randint(-128, 128, (_SIZE, _SIZE), dtype=torch.int8)
    with torch.inference_mode():
        with contextlib.suppress(RuntimeError):
            rates["matmul"] = round(best_rate(lambda: torch._int_mm(a, b), 2 * _SIZE**3, seconds), 1)
        with contextlib.suppress(RuntimeError, AttributeError):
            rates["conv"] = round(best_rate(_quantized_conv(), _CONV_FLOP, seconds), 1)
    return rates


def _quantized_conv() -> Callable[[], torch.Tensor]:
    shape = (_CONV["batch"], _CONV["in"], _CONV["side"], _CONV["side"])
    # reduce_range activations (0..127), as the project's quantizer makes them.
    x = torch.randint(0, 128, shape, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    weight = torch.randint(-127, 128, (_CONV["out"], _CONV["in"], 3, 3), dtype=torch.int8)
    scales = torch.full((_CONV["out"],), 0.01)
    zero_points = torch.zeros(_CONV["out"], dtype=torch.int64)
    bias = torch.zeros(_CONV["out"])
    x_scale, one = 0.02, [1, 1]
    onednn = torch.ops.onednn
    packed = onednn.qconv_prepack(weight, scales, x_scale, 0, one, one, one, 1, list(shape))

    def run() -> torch.Tensor:
        return onednn.qconv2d_pointwise(
            x, x_scale, 0, packed, scales, zero_points, bias, one, one, one, 1, 0.05, 0, None, "relu", [], ""
        )

    return run
