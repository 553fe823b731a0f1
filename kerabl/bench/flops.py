"""FLOP counts and the machine's floor, for the benchmark.

- `layer_flops(layer)`, `tail_flops(model, layer)`, `model_flops(model)`,
  `target_tail_flops(model, layers)`: FLOPs per image of convolutions and dense layers
  (elementwise work ignored), of one layer, of everything after a cut, of the whole network.
- `shortcut_flops(model, cut)`: FLOPs per image and unit of the Z study's Dense shortcut.
- `matmul_floor(sizes)`: the best float32 matmul throughput reached here by TensorFlow and
  NumPy (GFLOP/s, per library and size), and TensorFlow's bfloat16 rate beside it;
  `floor_line(floor)`: its printed line. `matmul_rate(size)`: that rate on one product, taken
  again beside another measurement.
- `onednn_enabled()`, `peak_rss_mb()`: what the machine runs with, and this process's memory.
- `cpu_description()`: the CPU's model and its vector units (AVX-512, AMX), which the floor and
  every rate here depend on.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kerabl.graph import tail_model


SEED = 0
# (m, k, n) products timed for the floor: square ones and dense-layer-like ones (many rows times
# a 4096-wide weight matrix, as the tails of AlexNet and VGG16 run).
MATMUL_SIZES = ((512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096),
                (400, 4096, 4096), (1600, 4096, 1024))


def layer_flops(layer) -> int:
    """FLOPs per image of one Conv2D, DepthwiseConv2D or Dense layer (0 for any other layer).

    Example:
        conv = model.get_layer("conv_3")     # 13 x 13 x 384 out, 3 x 3 kernel, 256 in
        layer_flops(conv)                    # 2 * 13 * 13 * 384 * 3 * 3 * 256

    A multiply-add counts as 2 FLOPs; bias, activation and other elementwise work are ignored.
    """
    import keras

    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return 0
    out = [int(d) for d in layer.output.shape[1:]]
    kshape = [int(d) for d in kernel.shape]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2 * int(np.prod(out)) * kshape[0] * kshape[1]
    if isinstance(layer, keras.layers.Conv2D):
        return 2 * int(np.prod(out)) * int(np.prod(kshape[:-1]))
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(np.prod(out[:-1], dtype=np.int64)) * kshape[0] * kshape[1]
    return 0


def tail_flops(model, layer: str) -> int:
    """FLOPs per image of the network after `layer` (the work of one masked copy).

    Example:
        tail_flops(net.model, "dense_1")   # dense_2 + dense_3: 2 * (4096 * 4096 + 4096 * 1000)
    """
    return sum(layer_flops(lay) for lay in tail_model(model, layer).layers)


def model_flops(model) -> int:
    """FLOPs per image of the whole network (a full forward pass).

    Example:
        model_flops(load_network("demo").model) / 1e6    # MFLOP per image
    """
    return sum(layer_flops(lay) for lay in model.layers)


def target_tail_flops(model, layers: Sequence[str]) -> list[int]:
    """FLOPs per image of the layers after each of `layers` in model (topological) order.

    Example:
        target_tail_flops(net.model, net.targets)   # one count per target, falling with depth

    At a cut point this is its tail (`tail_flops`): every later layer depends on the cut, and
    none before it does. Off a cut point, skip branches alongside the layer are not counted.
    """
    after = np.cumsum([layer_flops(lay) for lay in model.layers][::-1])[::-1].tolist() + [0]
    names = [lay.name for lay in model.layers]
    return [int(after[names.index(layer) + 1]) for layer in layers]


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls of `fn` (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _operands(rng: np.random.Generator,
              size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 operands (m x k) and (k x n) of a timed product."""
    m, k, n = size
    return (rng.standard_normal((m, k), dtype=np.float32),
            rng.standard_normal((k, n), dtype=np.float32))


def _gflops(size: tuple[int, int, int], fn: Callable[[], object], repeats: int) -> float:
    """GFLOP/s of `fn`, an (m x k) times (k x n) product, from its fastest timed call."""
    m, k, n = size
    return 2.0 * m * k * n / _best_seconds(fn, repeats) / 1e9


def _tf_matmul(a: np.ndarray, b: np.ndarray, dtype: str) -> Callable[[], object]:
    import tensorflow as tf

    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    x, y = tf.cast(tf.constant(a), dtype), tf.cast(tf.constant(b), dtype)
    return lambda: matmul(x, y).numpy()


def matmul_floor(sizes: Sequence[tuple[int, int, int]] = MATMUL_SIZES, repeats: int = 5,
                 bf16_sizes: Sequence[tuple[int, int, int]] | None = None) -> dict:
    """The best float32 matmul throughput here, (m x k) times (k x n), of TensorFlow and NumPy;
    and TensorFlow's bfloat16 rate beside it (the CPU's bfloat16 units; not the floor).

    Example:
        matmul_floor([(512, 512, 512)])["best_gflops"]   # e.g. 150.0

    Args:
        sizes: the (m, k, n) products timed in float32 by both libraries.
        repeats: timed calls per product (the fastest counts), after one untimed call.
        bf16_sizes: the products timed in bfloat16 (default: the largest square of `sizes`).

    Returns:
        {"best_gflops": the float32 floor (best of both libraries and every size),
         "by_library": {"tensorflow" | "numpy": {"m x k x n": GFLOP/s}},
         "by_size": {"m x k x n": best of both}, "best_library": the library reaching it,
         "bf16_gflops": best bfloat16 GFLOP/s, "bf16_by_size": {"m x k x n": GFLOP/s}}.
    """
    rng = np.random.default_rng(SEED)
    operands = {tuple(size): _operands(rng, size) for size in sizes}

    def rates(run) -> dict:
        return {"x".join(map(str, size)): _gflops(size, run(*operands[size]), repeats)
                for size in operands}

    by_library = {"tensorflow": rates(lambda a, b: _tf_matmul(a, b, "float32")),
                  "numpy": rates(lambda a, b: lambda: a @ b)}
    by_size = {key: max(lib[key] for lib in by_library.values()) for key in by_library["numpy"]}
    best_library = max(by_library, key=lambda lib: max(by_library[lib].values()))
    if bf16_sizes is None:
        bf16_sizes = [max((s for s in sizes if s[0] == s[1] == s[2]), default=sizes[-1])]
    operands = {tuple(size): operands.get(tuple(size)) or _operands(rng, size)
                for size in bf16_sizes}
    bf16 = rates(lambda a, b: _tf_matmul(a, b, "bfloat16"))
    return {"best_gflops": max(by_size.values()), "by_library": by_library, "by_size": by_size,
            "best_library": best_library, "bf16_gflops": max(bf16.values()), "bf16_by_size": bf16}


def matmul_rate(size: tuple[int, int, int] = (1024, 1024, 1024), repeats: int = 3) -> float:
    """The best float32 GFLOP/s of TensorFlow and NumPy on one product, now: the floor taken
    again beside another measurement (the probe row's rounds), so that a busy minute of a
    shared machine slows both sides of the ratio.

    Example:
        matmul_rate()   # e.g. 170.0 on 2 cores
    """
    a, b = _operands(np.random.default_rng(SEED), size)
    return max(_gflops(size, _tf_matmul(a, b, "float32"), repeats),
               _gflops(size, lambda: a @ b, repeats))


def floor_line(floor: dict) -> str:
    """The printed line of `matmul_floor`'s result: the floor, each library's best, bfloat16.

    Example:
        floor_line(matmul_floor([(512, 512, 512)]))
        # 'matmul floor: 150.2 GFLOP/s float32 (tensorflow 150.2 at 512x512x512, numpy ...); ...'
    """
    parts = [f"{lib} {max(rates.values()):.1f} at {max(rates, key=rates.get)}"
             for lib, rates in floor["by_library"].items()]
    bf16 = floor["bf16_by_size"]
    return (f"matmul floor: {floor['best_gflops']:.1f} GFLOP/s float32 ({'; '.join(parts)}; "
            f"sizes {', '.join(floor['by_size'])}); bfloat16 (tensorflow, not the floor): "
            f"{floor['bf16_gflops']:.1f} GFLOP/s at {max(bf16, key=bf16.get)}")


def onednn_enabled() -> bool:
    """Whether this TensorFlow runs its CPU kernels through oneDNN.

    Example:
        onednn_enabled()    # True with TF_ENABLE_ONEDNN_OPTS unset on x86
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


# cpuinfo flags named in the bench's machine line: the vector units the floor depends on
VECTOR_FLAGS = (("avx512f", "AVX-512"), ("amx_bf16", "AMX"), ("avx2", "AVX2"))


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and vector units, from /proc/cpuinfo (or the given text): the same
    package measures twice as fast on a CPU with AVX-512 and AMX as on one with AVX2 alone, so
    the bench says which it ran on. "unknown CPU" where there is no /proc/cpuinfo.

    Example:
        cpu_description()    # 'Intel(R) Xeon(R) Processor (AVX-512, AMX)'
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown CPU"
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    units = [name for flag, name in VECTOR_FLAGS if flag in flags]
    if "AVX-512" in units or "AMX" in units:      # AVX2 goes without saying beside them
        units = [name for name in units if name != "AVX2"]
    return f"{model} ({', '.join(units)})" if units else model


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB).

    Example:
        peak_rss_mb()     # e.g. 1178.0
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def shortcut_flops(model, cut, n_dropped: int = 1) -> int:
    """FLOPs per image and unit of the Z shortcut (`kerabl.graph.channel_shortcut`): the dropped
    channels' Dense kernel rows, then the layers after the Dense.

    Example:
        shortcut_flops(alexnet, channel_shortcut(alexnet, "conv_5"))   # 2*36*4096 + dense_2, _3
    """
    width = int(model.get_layer(cut.dense).kernel.shape[1])
    return 2 * n_dropped * cut.positions.shape[1] * width + tail_flops(model, cut.dense)


# Random equal-size cells each timed layer runs (a 4 x 4 grid's count).
GRID_CELLS = 16
# The classes of each paper network's study, and the widest probe cell the bench times.
STUDY_CLASSES = {"alexnet": 50, "vgg16": 8, "mobilenet_v2": 8, "resnet101": 8,
                 "efficientnet_lite0": 8}
PROBE_WIDTH_CAP = 300_000


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[object, float]:
    """`repeats` timed calls of `fn`: the last one's value and the fastest one's seconds (the
    least disturbed by anything else on the machine).

    Example:
        model, seconds = timed(lambda: build_model("demo"), repeats=3)
    """
    value, times = None, []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, min(times)
