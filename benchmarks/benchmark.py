"""Side-by-side inference / training benchmark: keras_pvt on every backend vs transformers
(PyTorch eager, torch.compile) and keras-hub's MiT, plus a resolution sweep.

    python benchmarks/benchmark.py                    # b0 and b2, batch 16, 224x224
    python benchmarks/benchmark.py --variants b0 --quick

Every measurement runs in its own worker process (Keras fixes its backend per process), after
warm-up, as the median of several timed runs. Results: a ratio table on stdout, JSON and a PNG
bar chart in --output-dir. Measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], mlp_ratios=[8, 8, 4, 4]),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], mlp_ratios=[8, 8, 4, 4]),
    "b2_linear": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3],
                      mlp_ratios=[8, 8, 4, 4], linear_attention=True),
}
# keras-hub's MiT with the closest configuration (MiT uses MLP ratio 4 everywhere).
MIT = {"b0": dict(hidden_dims=[32, 64, 160, 256], layerwise_depths=[2, 2, 2, 2]),
       "b2": dict(hidden_dims=[64, 128, 320, 512], layerwise_depths=[3, 4, 6, 3])}
BACKENDS = ("tensorflow", "jax", "torch")


def timed(fn, warmup: int, runs: int) -> float:
    """Median seconds of `fn()` over `runs` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pvt_v2_macs(hidden_sizes, depths, mlp_ratios, linear_attention=False, size=224,
                sr_ratios=(8, 4, 2, 1), patch_sizes=(7, 3, 3, 3), strides=(4, 2, 2, 2),
                num_classes=1000) -> int:
    """Multiply-accumulates of one image through a PVT v2 / MiT classifier (convs, matmuls,
    attention and the depthwise conv; norms and activations not counted)."""
    macs, side, channels_in = 0, size, 3
    for stage, (width, depth, ratio) in enumerate(zip(hidden_sizes, depths, mlp_ratios)):
        kernel, stride = patch_sizes[stage], strides[stage]
        side = (side + 2 * (kernel // 2) - kernel) // stride + 1
        tokens = side * side
        macs += tokens * kernel * kernel * channels_in * width
        if linear_attention:
            keys, reduction = 49, 49 * width * width
        elif sr_ratios[stage] > 1:
            keys = (side // sr_ratios[stage]) ** 2
            reduction = keys * sr_ratios[stage] ** 2 * width * width
        else:
            keys, reduction = tokens, 0
        hidden = int(width * ratio)
        per_block = (
            2 * tokens * width * width  # query, output projection
            + reduction + 2 * keys * width * width  # spatial reduction, key, value
            + 2 * tokens * keys * width  # scores and weighted sum
            + 2 * tokens * width * hidden + 9 * tokens * hidden  # Mix-FFN
        )
        macs += depth * per_block
        channels_in = width
    return macs + hidden_sizes[-1] * num_classes


def model_macs(library: str, variant: str, size: int) -> int:
    if library == "keras_hub MiT":  # MiT: MLP ratio 4 in every stage
        return pvt_v2_macs(MIT[variant]["hidden_dims"], MIT[variant]["layerwise_depths"],
                           [4, 4, 4, 4], size=size)
    return pvt_v2_macs(size=size, **VARIANTS[variant])


def matmul_peak_gflops() -> float:
    """fp32 GFLOP/s of a 2048x2048 matmul (PyTorch / MKL), the arithmetic limit's yardstick."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds = timed(lambda: a @ b, 3, 10)
    return 2 * 2048**3 / seconds / 1e9


# --- workers (each in its own process) -----------------------------------------------------


def worker_keras(args) -> list[dict]:
    import keras
    import numpy as np

    import keras_pvt

    results = []
    x = np.random.default_rng(0).standard_normal(
        (args.batch, args.size, args.size, 3)).astype("float32")
    for variant in args.variants:
        backbone = keras_pvt.PVTv2Backbone(
            **{k: v for k, v in VARIANTS[variant].items()}, num_heads=[1, 2, 5, 8])
        model = keras_pvt.PVTv2Classifier(backbone=backbone, num_classes=1000)
        modes = {"predict_on_batch": None, "call": None}
        if keras.backend.backend() != "torch":
            modes["predict_on_batch jit"] = True
        if keras.backend.backend() == "tensorflow":
            modes["predict_on_batch no-jit"] = False
        for mode, jit in modes.items():
            if mode == "call":
                def fn(model=model):
                    keras.ops.convert_to_numpy(model(x, training=False))
            else:
                model.compile(jit_compile="auto" if jit is None else jit)
                model.make_predict_function(force=True)

                def fn(model=model):
                    model.predict_on_batch(x)
            # Forced XLA is ~8x slower on this CPU: fewer repetitions keep the run short.
            warmup, runs = (1, min(3, args.runs)) if jit else (args.warmup, args.runs)
            seconds = timed(fn, warmup, runs)
            results.append(dict(library="keras_pvt", backend=keras.backend.backend(),
                                variant=variant, mode=mode,
                                images_per_s=args.batch / seconds, peak_rss_mib=peak_rss_mib()))
        # One training step (forward + backward + AdamW update) on the batch.
        model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        y = np.zeros((args.batch,), "int32")
        seconds = timed(lambda m=model, y=y: m.train_on_batch(x, y), 1, max(2, args.runs // 2))
        results.append(dict(library="keras_pvt", backend=keras.backend.backend(),
                            variant=variant, mode="train_on_batch",
                            images_per_s=args.batch / seconds, peak_rss_mib=peak_rss_mib()))
        if variant in MIT:
            import keras_hub

            mit = keras_hub.models.MiTBackbone(
                layerwise_num_heads=[1, 2, 5, 8], layerwise_sr_ratios=[8, 4, 2, 1],
                max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3, 3, 3],
                layerwise_strides=[4, 2, 2, 2], num_layers=4,
                image_shape=(args.size, args.size, 3),  # MiT needs a static size
                **MIT[variant])
            head = keras_hub.models.ImageClassifier(backbone=mit, num_classes=1000)
            head.compile()
            seconds = timed(lambda m=head: m.predict_on_batch(x), args.warmup, args.runs)
            results.append(dict(library="keras_hub MiT", backend=keras.backend.backend(),
                                variant=variant, mode="predict_on_batch",
                                images_per_s=args.batch / seconds, peak_rss_mib=peak_rss_mib()))
    return results


def worker_transformers(args) -> list[dict]:
    import torch
    from transformers import PvtV2Config, PvtV2ForImageClassification

    torch.set_grad_enabled(False)
    x = torch.randn(args.batch, 3, args.size, args.size)
    results = []
    if args.library == "peak":
        return [dict(library="matmul 2048^2", backend="torch", variant="-", mode="peak",
                     gflops=matmul_peak_gflops())]
    # "tuned malloc": the same process with glibc's mmap/trim thresholds raised (see README).
    backend = "torch eager" + (" tuned malloc" if args.library == "tuned" else "")
    for variant in args.variants:
        model = PvtV2ForImageClassification(PvtV2Config(**VARIANTS[variant])).eval()
        seconds = timed(lambda m=model: m(x), args.warmup, args.runs)
        results.append(dict(library="transformers", backend=backend, variant=variant,
                            mode="forward", images_per_s=args.batch / seconds,
                            peak_rss_mib=peak_rss_mib()))
        if not args.quick and args.library != "tuned":
            try:
                compiled = torch.compile(model)
                seconds = timed(lambda m=compiled: m(x), 2, args.runs)
                results.append(dict(library="transformers", backend="torch.compile",
                                    variant=variant, mode="forward",
                                    images_per_s=args.batch / seconds,
                                    peak_rss_mib=peak_rss_mib()))
            except Exception as error:  # inductor needs a C++ toolchain; report, don't fail
                print(f"torch.compile unavailable: {type(error).__name__}: {error}",
                      file=sys.stderr)
    return results


def worker_sweep(args) -> list[dict]:
    """Seconds per image at batch 1 for b2 and b2-linear at growing resolutions."""
    results = []
    if args.library == "transformers":
        import torch
        from transformers import PvtV2Config, PvtV2ForImageClassification

        torch.set_grad_enabled(False)
        for variant in ("b2", "b2_linear"):
            model = PvtV2ForImageClassification(PvtV2Config(**VARIANTS[variant])).eval()
            for size in args.sweep_sizes:
                x = torch.randn(1, 3, size, size)
                seconds = timed(lambda m=model, x=x: m(x), 1, 2)
                results.append(dict(library="transformers", backend="torch eager",
                                    variant=variant, size=size, seconds_per_image=seconds))
        return results
    import keras
    import numpy as np

    import keras_pvt

    for variant in ("b2", "b2_linear"):
        backbone = keras_pvt.PVTv2Backbone(**VARIANTS[variant], num_heads=[1, 2, 5, 8])
        model = keras_pvt.PVTv2Classifier(backbone=backbone, num_classes=1000)
        model.compile()
        for size in args.sweep_sizes:
            x = np.zeros((1, size, size, 3), "float32")
            seconds = timed(lambda m=model, x=x: m.predict_on_batch(x), 1, 2)
            results.append(dict(library="keras_pvt", backend=keras.backend.backend(),
                                variant=variant, size=size, seconds_per_image=seconds))
    return results


# --- orchestration -------------------------------------------------------------------------


def run_worker(kind: str, args, backend: str | None = None, library: str = "") -> list[dict]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        env["KERAS_BACKEND"] = backend
    if library == "tuned":
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**31 - 1), MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
    command = [sys.executable, __file__, "--worker", kind, "--library", library,
               "--batch", str(args.batch), "--size", str(args.size), "--runs", str(args.runs),
               "--warmup", str(args.warmup), "--variants", *args.variants,
               "--sweep-sizes", *map(str, args.sweep_sizes)] + (["--quick"] if args.quick else [])
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"worker {kind} {backend or library} failed:\n{result.stderr[-3000:]}",
              file=sys.stderr)
        return []
    print(f"  {kind} {backend or library}: {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def best(rows, **match) -> float | None:
    values = [r["images_per_s"] for r in rows
              if all(r.get(k) == v for k, v in match.items()) and r["mode"] != "train_on_batch"]
    return max(values) if values else None


def summarize(rows, sweep, args, peak_gflops: float | None) -> list[str]:
    lines = []
    if peak_gflops:
        lines.append(f"fp32 2048x2048 matmul: {peak_gflops:.0f} GFLOP/s; '% limit' = achieved "
                     "GFLOP/s (2 x analytic MACs x img/s) / that")
        for variant in args.variants:
            limit = peak_gflops * 1e9 / (2 * model_macs("keras_pvt", variant, args.size))
            lines.append(f"  {variant}: {model_macs('keras_pvt', variant, args.size) / 1e9:.3f} "
                         f"GMAC/image -> arithmetic limit {limit:.0f} img/s" + (
                f"; MiT-{variant}: {model_macs('keras_hub MiT', variant, args.size) / 1e9:.3f} "
                "GMAC/image" if variant in MIT else ""))
        lines.append("")
    lines.append(f"{'variant':8s} {'library':14s} {'backend':26s} {'mode':24s} {'img/s':>8s} "
                 f"{'vs HF':>6s} {'vs MiT':>7s} {'% limit':>7s} {'RSS MiB':>8s}")
    checks = []
    for variant in args.variants:
        reference = best(rows, library="transformers", backend="torch eager", variant=variant)
        for r in [r for r in rows if r["variant"] == variant]:
            mit = best(rows, library="keras_hub MiT", backend=r["backend"], variant=variant)
            vs_hf = r["images_per_s"] / reference if reference else float("nan")
            vs_mit = r["images_per_s"] / mit if mit and r["library"] == "keras_pvt" else None
            share = (100 * 2 * model_macs(r["library"], variant, args.size) * r["images_per_s"]
                     / (peak_gflops * 1e9)) if peak_gflops else float("nan")
            lines.append(
                f"{variant:8s} {r['library']:14s} {r['backend']:26s} {r['mode']:24s} "
                f"{r['images_per_s']:8.1f} {vs_hf:6.2f} "
                f"{(f'{vs_mit:7.2f}' if vs_mit else ''):>7s} {share:6.1f}% "
                f"{r['peak_rss_mib']:8.0f}")
        if not reference:
            continue
        per_backend = {b: best(rows, library="keras_pvt", backend=b, variant=variant)
                       for b in BACKENDS}
        per_backend = {b: v for b, v in per_backend.items() if v}
        if per_backend:
            top = max(per_backend.values())
            checks.append((f"{variant}: best backend >= 3x transformers eager", top / reference,
                           3.0))
            for backend, value in per_backend.items():
                checks.append((f"{variant}: {backend} >= 1x transformers eager",
                               value / reference, 1.0))
                mit = best(rows, library="keras_hub MiT", backend=backend, variant=variant)
                if mit:
                    checks.append((f"{variant}: {backend} >= 1.3x keras-hub MiT", value / mit,
                                   1.3))
                    # MiT does less arithmetic (MLP ratio 4): compare work per second too.
                    per_mac = (value * model_macs("keras_pvt", variant, args.size)) / (
                        mit * model_macs("keras_hub MiT", variant, args.size))
                    checks.append((f"{variant}: {backend} vs MiT, MACs per second (info)",
                                   per_mac, "info"))
            if "torch" in per_backend:
                checks.append((f"{variant}: torch backend >= 1.5x transformers eager",
                               per_backend["torch"] / reference, 1.5))
    for library in ("keras_pvt", "transformers"):
        linear = {r["size"]: r["seconds_per_image"] for r in sweep
                  if r["library"] == library and r["variant"] == "b2_linear"}
        if len(linear) >= 2:
            low, high = min(linear), max(linear)
            growth = (linear[high] / linear[low]) / ((high / low) ** 2)
            checks.append((f"b2_linear {library}: time growth / pixel growth {low}->{high} "
                           "<= 1.2", growth, None))
    lines.append("")
    for name, value, target in checks:
        if target == "info":
            ok = ""
        elif target is None:
            ok = "PASS" if value <= 1.2 else "MISS"
        else:
            ok = "PASS" if value >= target else "MISS"
        lines.append(f"{ok:5s} {name:60s} {value:6.2f}")
    if sweep:
        lines.append("")
        lines.append("resolution sweep (batch 1, seconds per image):")
        for r in sweep:
            lines.append(f"  {r['library']:12s} {r['backend']:12s} {r['variant']:10s} "
                         f"{r['size']:4d}  {r['seconds_per_image']:.3f}")
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def chart(rows, path: Path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = {v: [r for r in rows if r["variant"] == v and r["mode"] != "train_on_batch"]
               for v in args.variants}
    height = max(len(s) for s in subsets.values()) * 0.32 + 1.2
    fig, axes = plt.subplots(1, len(args.variants), figsize=(7 * len(args.variants), height))
    axes = [axes] if len(args.variants) == 1 else axes
    for axis, variant in zip(axes, args.variants):
        subset = subsets[variant][::-1]
        labels = [f"{r['library']} | {r['backend']} | {r['mode']}" for r in subset]
        colors = ["tab:blue" if r["library"] == "keras_pvt" else "tab:gray" for r in subset]
        values = [r["images_per_s"] for r in subset]
        axis.barh(range(len(subset)), values, color=colors)
        for i, value in enumerate(values):
            axis.text(value, i, f" {value:.1f}", va="center", fontsize=7)
        reference = best(rows, library="transformers", backend="torch eager", variant=variant)
        if reference:
            axis.axvline(reference, color="tab:red", linewidth=0.8, linestyle="--")
        axis.set_yticks(range(len(subset)), labels, fontsize=7)
        axis.set_xlabel("images / s (dashed: transformers eager)")
        axis.set_title(f"PVT v2 {variant}, batch {args.batch}, {args.size}x{args.size}, fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sweep-sizes", nargs="+", type=int, default=[224, 448, 896])
    parser.add_argument("--sweep-backend", default="torch")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer runs, no torch.compile")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--replot", action="store_true",
                        help="redraw benchmark.png from --output-dir/benchmark.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--library", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.warmup = 3, 1

    if args.worker:
        work = {"keras": worker_keras, "transformers": worker_transformers,
                "sweep": worker_sweep}[args.worker]
        print(json.dumps(work(args)))
        return 0

    if args.replot:
        saved = json.loads((args.output_dir / "benchmark.json").read_text())
        args.variants = saved["args"]["variants"]
        args.batch, args.size = saved["args"]["batch"], saved["args"]["size"]
        chart(saved["results"], args.output_dir / "benchmark.png", args)
        return 0

    started = time.perf_counter()
    peak = run_worker("transformers", args, library="peak")
    rows = run_worker("transformers", args)
    rows += run_worker("transformers", args, library="tuned")
    for backend in args.backends:
        rows += run_worker("keras", args, backend=backend)
    sweep = []
    if not args.no_sweep:
        sweep = run_worker("sweep", args, library="transformers")
        sweep += run_worker("sweep", args, backend=args.sweep_backend, library="keras_pvt")
    peak_gflops = peak[0]["gflops"] if peak else None
    lines = summarize(rows, sweep, args, peak_gflops)
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"\nmachine: {machine}; batch {args.batch}, {args.size}x{args.size}, fp32\n")
    print("\n".join(lines))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "benchmark.json").write_text(json.dumps(
        {"machine": machine, "matmul_peak_gflops": peak_gflops,
         "args": {k: v for k, v in vars(args).items() if k not in ("output_dir",)},
         "results": rows, "sweep": sweep}, indent=2, default=str))
    chart(rows, args.output_dir / "benchmark.png", args)
    print(f"\nwrote {args.output_dir}/benchmark.json and benchmark.png "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
