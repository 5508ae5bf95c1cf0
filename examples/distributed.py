"""Train a PVT v2 classifier data-parallel over several devices, on each backend's own engine.

    python examples/distributed.py --backend jax|tensorflow|torch [--preset pvt_v2_b0]
        [--devices 2] [--epochs 3] [--batch-size 16] [--image-size 64] [--compare-single]

Every device holds a full copy of the model and takes its share of each global batch; the
gradients are averaged across devices before every update, so the copies stay identical:

- JAX: `keras.distribution.DataParallel`, then the usual `fit`. On a CPU-only machine the
  script splits the CPU into `--devices` virtual XLA devices (`XLA_FLAGS`).
- TensorFlow: `tf.distribute.MirroredStrategy` (GPUs, or the CPU split into `--devices`
  logical devices); build and compile inside `strategy.scope()`, `fit` a `tf.data` dataset.
- PyTorch: `torch.nn.parallel.DistributedDataParallel` in one process per device (gloo on
  CPU, NCCL on GPUs) and a custom loop; a keras_pvt model is a `torch.nn.Module` whose
  `parameters()` are its Keras variables. Started plainly, the script spawns `--devices`
  processes itself; under `torchrun` it reads RANK / WORLD_SIZE / LOCAL_RANK instead.

Several hosts: JAX takes `--coordinator-address HOST:PORT --num-processes N --process-id I`
(passed to `jax.distributed.initialize`) on every host; PyTorch runs under `torchrun`.

The data are generated (noisy coloured shapes, as in examples/fine_tune.py; no download). The
script prints the training loss of every epoch, checks that every replica ends with the same
weights, and with `--compare-single` trains a single-device copy from the same initial weights
on the same global batches and prints how far it ends from the data-parallel model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--preset", default="pvt_v2_b0", help="preset name, hf://, or path")
    parser.add_argument("--devices", type=int, default=2,
                        help="devices (JAX, TensorFlow) or processes (PyTorch) to train on")
    parser.add_argument("--image-size", type=int, default=64, help="training resolution")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-single", action="store_true",
                        help="also train on one device and compare the results")
    parser.add_argument("--report", help="write the figures to this JSON file")
    parser.add_argument("--coordinator-address", help="JAX on several hosts: HOST:PORT")
    parser.add_argument("--num-processes", type=int, help="JAX on several hosts")
    parser.add_argument("--process-id", type=int, help="JAX on several hosts")
    args = parser.parse_args(argv)
    if args.batch_size % args.devices:
        parser.error("--batch-size must be a multiple of --devices")
    # Whole global batches only, so that every replica gets the same number of samples.
    args.samples -= args.samples % args.batch_size
    if not args.samples:
        parser.error("--samples must be at least --batch-size")
    return args


# --- shared by the three backends ----------------------------------------------------------

def generated_data(args: argparse.Namespace):
    """The training images (uint8) and labels, and the class names."""
    sys.path.insert(0, str(EXAMPLES))
    from fine_tune import CLASSES, shapes_dataset

    images, labels = shapes_dataset(args.samples, args.image_size, seed=args.seed)
    return images, labels, list(CLASSES)


def new_classifier(args: argparse.Namespace, class_names: list[str]):
    """The preset's backbone with a new head, preprocessing at `--image-size`."""
    import keras

    import keras_pvt

    keras.utils.set_random_seed(args.seed)  # the new head's initial weights
    model = keras_pvt.PVTv2Classifier.from_preset(
        args.preset, num_classes=len(class_names), class_names=class_names)
    model.preprocessor.image_size = (args.image_size, args.image_size)
    return model


# SGD with momentum rather than Adam(W): Adam scales every update to about the learning
# rate, so parameters whose true gradient is zero (the attention keys' bias: softmax ignores
# a shift of all scores) move with the rounding noise in their gradients, which differs
# between one device and several; the single-device comparison then measured up to 7e-5 on
# PyTorch instead of 1e-7.
MOMENTUM = 0.9


def compile_classifier(model, args: argparse.Namespace):
    """`compile` with SGD and the cross-entropy of the logits (JAX, TensorFlow)."""
    import keras

    model.compile(optimizer=keras.optimizers.SGD(args.learning_rate, momentum=MOMENTUM),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def tf_dataset(images, labels, args: argparse.Namespace):
    """Global batches of raw images; `fit` runs the model's preprocessor on them and the
    strategy / distribution splits each batch across the devices."""
    import tensorflow as tf

    # Shuffled once, in an order fixed by the seed: the single-device comparison must see the
    # same batches, and a distributed `fit` draws tf.data's per-epoch reshuffles
    # (`reshuffle_each_iteration=True`) in another order than a single-device one.
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images), seed=args.seed, reshuffle_each_iteration=False)
            .batch(args.batch_size, drop_remainder=True))


def fit(model, images, labels, args: argparse.Namespace) -> list[float]:
    """`fit` on the global batches; returns the loss of every epoch."""
    # (`shuffle=False`: the dataset is shuffled already; keras would warn that it ignores it)
    history = model.fit(tf_dataset(images, labels, args), epochs=args.epochs, shuffle=False,
                        verbose=0)
    return history.history["loss"]


def max_abs_difference(a: list, b: list) -> float:
    """The largest |a - b| over lists of arrays of matching shapes."""
    import numpy as np

    return max((float(np.max(np.abs(np.asarray(x, "float64") - np.asarray(y, "float64")),
                             initial=0.0)) for x, y in zip(a, b, strict=True)), default=0.0)


def spread(copies: list) -> float:
    """The largest |Δ| between the first of several copies of an array and the others."""
    return max_abs_difference(copies[1:], copies[:1] * (len(copies) - 1))


def report(args: argparse.Namespace, figures: dict) -> None:
    """Prints the figures and writes them to `--report`."""
    for epoch, loss in enumerate(figures["losses"], 1):
        print(f"epoch {epoch}/{len(figures['losses'])}: loss {loss:.4f}")
    print(f"replicas: max |Δ| between the {figures['replicas']} copies of the weights "
          f"{figures['replica_max_abs_diff']:.1e}")
    if "single_weights_max_abs_diff" in figures:
        print("single device, same global batches: max |Δ| of the epoch losses "
              f"{figures['single_losses_max_abs_diff']:.1e}, of the weights "
              f"{figures['single_weights_max_abs_diff']:.1e}")
    if args.report:
        Path(args.report).write_text(json.dumps(figures, indent=1))


def compare_single(args: argparse.Namespace, initial_weights: list, parallel_losses: list,
                   parallel_weights: list, images, labels, class_names: list[str]) -> dict:
    """Trains a one-device copy (built outside any strategy or distribution) from the same
    initial weights on the same global batches with `fit`; returns its differences."""
    single = compile_classifier(new_classifier(args, class_names), args)
    single.set_weights(initial_weights)
    losses = fit(single, images, labels, args)
    return {
        "single_losses": losses,
        "single_losses_max_abs_diff": max_abs_difference(losses, parallel_losses),
        "single_weights_max_abs_diff": max_abs_difference(single.get_weights(),
                                                          parallel_weights),
    }


# --- JAX: keras.distribution.DataParallel ----------------------------------------------------

def run_jax(args: argparse.Namespace) -> None:
    """`fit` under `keras.distribution.DataParallel`."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        # Only the CPU platform reads this (before jax starts): N virtual devices to try the
        # recipe on a machine without accelerators. GPUs and TPUs are used as they are.
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={args.devices}").strip()
    import jax

    if args.coordinator_address:  # several hosts: every process runs this same command
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    import keras
    import numpy as np

    devices = jax.devices()  # every host's devices; a single host may take the first N
    if jax.process_count() == 1:
        devices = devices[:args.devices]
    distribution = keras.distribution.DataParallel(devices=devices)
    images, labels, class_names = generated_data(args)
    if jax.process_index() == 0:
        print(f"jax: DataParallel over {len(devices)} devices ({devices[0].platform}), global "
              f"batch {args.batch_size}")

    with distribution.scope():  # variables replicated, each batch split across the devices
        model = compile_classifier(new_classifier(args, class_names), args)
        initial_weights = model.get_weights()
        # Several processes: the distribution gives each one its part of every batch.
        losses = fit(model, images, labels, args)

    # Every variable: one whole copy per device (this process's devices are compared).
    arrays = [variable.value for variable in model.weights]
    copies = [[np.asarray(shard.data) for shard in a.addressable_shards] for a in arrays]
    figures = {
        "backend": "jax", "replicas": len(copies[0]), "losses": losses,
        "replica_max_abs_diff": max(spread(c) for c in copies),
        "fully_replicated": all(a.sharding.is_fully_replicated for a in arrays),
        "replica_devices": sorted(str(d) for d in arrays[0].sharding.device_set),
    }
    if args.compare_single and jax.process_count() == 1:
        figures |= compare_single(args, initial_weights, figures["losses"], model.get_weights(),
                                  images, labels, class_names)
    if jax.process_index() == 0:
        report(args, figures)


# --- TensorFlow: tf.distribute.MirroredStrategy ----------------------------------------------

def run_tensorflow(args: argparse.Namespace) -> None:
    """`fit` of a model built and compiled inside `MirroredStrategy.scope()`."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        devices = [f"/gpu:{i}" for i in range(min(args.devices, len(gpus)))]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        # Split the CPU into logical devices; this must happen before TensorFlow (or keras,
        # which is why it is imported below) initialises its runtime.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
        devices = [f"/cpu:{i}" for i in range(args.devices)]
        # NCCL, the default all-reduce, is for GPUs.
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    images, labels, class_names = generated_data(args)
    print(f"tensorflow: MirroredStrategy over {strategy.num_replicas_in_sync} devices "
          f"({', '.join(devices)}), global batch {args.batch_size}")

    with strategy.scope():  # every variable becomes a MirroredVariable, one copy per device
        model = compile_classifier(new_classifier(args, class_names), args)
    initial_weights = model.get_weights()
    losses = fit(model, images, labels, args)

    # Every variable is a MirroredVariable: its per-device copies.
    copies = [strategy.experimental_local_results(v.value) for v in model.weights]
    figures = {
        "backend": "tensorflow", "replicas": min(len(c) for c in copies),
        "losses": losses,
        "replica_max_abs_diff": max(spread([x.numpy() for x in c]) for c in copies),
        "replica_devices": [x.device for x in copies[0]],
        "variable_type": type(model.weights[0].value).__name__,
    }
    if args.compare_single:
        figures |= compare_single(args, initial_weights, figures["losses"], model.get_weights(),
                                  images, labels, class_names)
    report(args, figures)


# --- PyTorch: DistributedDataParallel, a custom loop ----------------------------------------

def run_torch(args: argparse.Namespace) -> None:
    """Spawns one process per device, or joins the processes `torchrun` started."""
    if "RANK" in os.environ:  # torchrun (or another launcher) started this process
        torch_worker(int(os.environ["LOCAL_RANK"]), args, launched=True)
        return
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on this machine for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      WORLD_SIZE=str(args.devices))
    mp.spawn(torch_worker, args=(args, False), nprocs=args.devices, join=True)


def torch_batches(dataset, args: argparse.Namespace, world_size: int, rank: int, epoch: int):
    """This rank's batches for `epoch`: a `DistributedSampler` gives each rank its own
    share of the (reshuffled) samples, `global batch / world_size` per step."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    sampler.set_epoch(epoch)  # a new order every epoch, the same on every rank
    return DataLoader(dataset, batch_size=args.batch_size // world_size, sampler=sampler,
                      drop_last=True)


def torch_train_epoch(forward, preprocessor, optimizer, batches, loss_fn,
                      average=None) -> float:
    """One epoch of the custom loop; returns the mean loss (averaged over the ranks if
    `average` is given)."""
    import torch

    losses = []
    for images, labels in batches:
        x = preprocessor(images)  # the model's own: resize and normalise the raw images
        logits = forward(x, training=True)
        loss = loss_fn(logits, labels.to(logits.device).long())
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients across the ranks here
        optimizer.step()
        losses.append(loss.detach())
    mean = torch.stack(losses).mean()
    if average is not None:
        mean = average(mean)
    return float(mean)


def torch_worker(local_rank: int, args: argparse.Namespace, launched: bool) -> None:
    """One data-parallel replica: a keras_pvt model wrapped in `DistributedDataParallel`."""
    import torch

    if not launched:
        os.environ["RANK"] = os.environ["LOCAL_RANK"] = str(local_rank)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))  # processes here
    if torch.cuda.is_available():
        os.environ["KERAS_TORCH_DEVICE"] = f"cuda:{local_rank}"  # read when keras starts
        torch.cuda.set_device(local_rank)
        engine = "nccl"
    else:
        os.environ["KERAS_TORCH_DEVICE"] = "cpu"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # share the CPU
        engine = "gloo"
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(engine, rank=rank, world_size=world_size)
    try:
        images, labels, class_names = generated_data(args)
        dataset = torch.utils.data.TensorDataset(torch.from_numpy(images),
                                                 torch.from_numpy(labels))
        model = new_classifier(args, class_names)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if rank == 0:
            print(f"torch: DistributedDataParallel ({engine}) over {world_size} processes, "
                  f"global batch {args.batch_size}", flush=True)
        # DDP copies rank 0's weights to every rank, then all-reduces the gradients.
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=args.learning_rate,
                                    momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()

        def average(value):
            dist.all_reduce(value)
            return value / world_size

        losses = []
        for epoch in range(args.epochs):
            batches = torch_batches(dataset, args, world_size, rank, epoch)
            losses.append(torch_train_epoch(ddp, model.preprocessor, optimizer, batches,
                                            loss_fn, average))

        # Every rank's weights, gathered to compare them with rank 0's.
        flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            replica_diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
            figures = {"backend": "torch", "replicas": world_size, "losses": losses,
                       "replica_max_abs_diff": replica_diff}
            if args.compare_single:
                figures |= torch_compare_single(args, dataset, initial, world_size, class_names,
                                                losses, flat, loss_fn)
            report(args, figures)
        dist.barrier()  # the others wait for rank 0's comparison
    finally:
        dist.destroy_process_group()


def torch_compare_single(args: argparse.Namespace, dataset, initial: dict, world_size: int,
                         class_names: list[str], parallel_losses: list[float], parallel_flat,
                         loss_fn) -> dict:
    """Trains a one-process copy from the same initial weights on the same global batches
    (each the ranks' batches of a step, joined); returns its differences."""
    import torch

    model = new_classifier(args, class_names)
    model.load_state_dict(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=MOMENTUM)
    losses = []
    for epoch in range(args.epochs):
        per_rank = [torch_batches(dataset, args, world_size, r, epoch) for r in range(world_size)]
        batches = ((torch.cat([b[0] for b in step]), torch.cat([b[1] for b in step]))
                   for step in zip(*per_rank))
        losses.append(torch_train_epoch(model, model.preprocessor, optimizer, batches, loss_fn))
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    return {"single_losses": losses,
            "single_losses_max_abs_diff": max_abs_difference(losses, parallel_losses),
            "single_weights_max_abs_diff": float((flat - parallel_flat).abs().max())}


def main(argv: list[str] | None = None) -> None:
    """Runs the recipe of `--backend`."""
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend  # before keras is imported (per process)
    {"jax": run_jax, "tensorflow": run_tensorflow, "torch": run_torch}[args.backend](args)


if __name__ == "__main__":
    main()
