"""Train a ResNet with fused blocks: a complete script to copy and adapt.

    python examples/train.py --model resnet18 --data digits --epochs 5
    python examples/train.py --model timm:resnet50d --drop-path 0.05 --data /data/imagenette \\
        --image-size 160 --amp --channels-last --compile --checkpoint run.pt
    torchrun --nproc_per_node 2 examples/train.py --model resnet18 --data digits

``--model``: a torchvision ResNet name, or ``timm:NAME`` for a timm model. ``--backend``:
a fused_resnet backend (``auto`` picks the fastest for the device), or ``eager`` for the
unconverted model. ``--data``: ``digits`` (scikit-learn's 8x8 handwritten digits, real
data bundled with scikit-learn, upscaled), ``synthetic``, or a folder of class
sub-folders (``PATH/train`` and ``PATH/val`` when present, else a random 80/20 split).
Under ``torchrun`` every process trains on its shard with ``DistributedDataParallel``,
and BatchNorm uses the statistics of the whole batch (``convert(..., sync_bn=True)``).
Checkpoints hold the plain torchvision/timm ``state_dict`` (load it without
fused_resnet), the optimizer, LR schedule, AMP scaler and position; ``--resume``
continues from the exact step where a run stopped. The last line printed is
``test accuracy: NN.N%``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fused_resnet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="torchvision name or timm:NAME")
    p.add_argument("--backend", default="auto",
                   choices=("auto", "eager") + fused_resnet.BACKENDS,
                   help="fused_resnet backend, or eager for the unconverted model")
    p.add_argument("--data", default="digits", help="digits | synthetic | PATH (ImageFolder)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps (the LR schedule still spans --epochs)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--drop-path", type=float, default=0.0, help="timm models: drop_path_rate")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--checkpoint", type=Path, default=None, help="save here after each epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--plot", type=Path, default=None, help="loss/accuracy plot (PNG)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ data
class Synthetic(Dataset):
    """Noisy copies of one random template per class: learnable, no files needed."""

    def __init__(self, n: int, classes: int, size: int, seed: int):
        g = torch.Generator().manual_seed(1234)  # the same templates for every split
        self.templates = torch.randn(classes, 3, size, size, generator=g)
        g.manual_seed(seed)
        self.labels = torch.randint(classes, (n,), generator=g)
        self.noise_seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + i)
        y = self.labels[i]
        return self.templates[y] + 2.0 * torch.randn(self.templates[y].shape, generator=g), y


def digits(size: int) -> tuple[Dataset, Dataset, int]:
    """scikit-learn's 1797 handwritten digits (8x8, 0..16), upscaled to RGB size x size."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10


def image_folder(root: Path, size: int) -> tuple[Dataset, Dataset, int]:
    from torchvision import datasets
    from torchvision import transforms as T

    norm = T.Normalize(MEAN, STD)
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                          norm])
    test_tf = T.Compose([T.Resize(int(size * 1.14)), T.CenterCrop(size), T.ToTensor(), norm])
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = datasets.ImageFolder(root / "train", train_tf)
        return train, datasets.ImageFolder(root / "val", test_tf), len(train.classes)
    full = datasets.ImageFolder(root, train_tf)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
    split = int(0.8 * len(full))
    test = datasets.ImageFolder(root, test_tf)
    return (torch.utils.data.Subset(full, order[:split]),
            torch.utils.data.Subset(test, order[split:]), len(full.classes))


def datasets_for(args) -> tuple[Dataset, Dataset, int]:
    if args.data == "digits":
        return digits(args.image_size)
    if args.data == "synthetic":
        return (Synthetic(2048, 10, args.image_size, seed=1),
                Synthetic(512, 10, args.image_size, seed=2), 10)
    return image_folder(Path(args.data), args.image_size)


class EpochSampler(torch.utils.data.Sampler):
    """This process's shard of a permutation fixed by (seed, epoch), from batch ``skip``
    on: a resumed run sees exactly the batches it had not trained on yet."""

    def __init__(self, n: int, rank: int, world: int, batch_size: int, seed: int):
        self.n, self.rank, self.world, self.batch, self.seed = n, rank, world, batch_size, seed
        self.epoch, self.skip = 0, 0
        self.per_rank = n // world  # equal shards: every process runs the same step count

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def steps(self) -> int:
        return self.per_rank // self.batch  # full batches only (drop_last)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        order = torch.randperm(self.n, generator=g)[:self.per_rank * self.world]
        mine = order[self.rank::self.world][:self.steps() * self.batch]
        return iter(mine[self.skip * self.batch:].tolist())

    def __len__(self) -> int:
        return (self.steps() - self.skip) * self.batch


# ----------------------------------------------------------------------------- model
def build_model(args, classes: int, distributed: bool) -> nn.Module:
    if args.model.startswith("timm:"):
        import timm

        model = timm.create_model(args.model[5:], num_classes=classes,
                                  drop_path_rate=args.drop_path)
    else:
        import torchvision

        model = getattr(torchvision.models, args.model)(num_classes=classes)
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.backend != "eager":
        # Fused blocks synchronise their BatchNorm statistics on any device.
        model = fused_resnet.convert(model, backend=args.backend, sync_bn=distributed)
    elif distributed and args.device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # PyTorch's: GPUs only
    return model


# ---------------------------------------------------------------------------- output
class Progress:
    """A one-line progress bar on a terminal; silent otherwise (logs, CI)."""

    def __init__(self, total: int, prefix: str, enabled: bool):
        self.total, self.prefix = total, prefix
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def update(self, step: int, loss: float, acc: float, rate: float) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and step < self.total):
            return
        self.last = now
        width = 24
        filled = int(width * step / max(self.total, 1))
        sys.stderr.write(f"\r{self.prefix} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{step}/{self.total} loss {loss:.3f} acc {100 * acc:.1f}% "
                         f"{rate:.0f} img/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def plot(history: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [100 * h["test_acc"] for h in history], marker="o", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


# ------------------------------------------------------------------------ train/test
def autocast(args):
    dtype = torch.float16 if args.device.startswith("cuda") else torch.bfloat16
    return torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=args.amp)


def to_device(x: torch.Tensor, y: torch.Tensor, args):
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    return (x.to(args.device, non_blocking=True).contiguous(memory_format=fmt),
            y.to(args.device, non_blocking=True))


def all_sum(values: list[float], device: str) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, args) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = to_device(x, y, args)
        with autocast(args):
            correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    correct, total = all_sum([correct, total], args.device)
    return correct / max(total, 1)


def main(argv=None) -> None:
    args = parse_args(argv)
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local}"
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    main_process = rank == 0
    log = print if main_process else (lambda *a, **k: None)
    torch.manual_seed(args.seed)

    train_set, test_set, classes = datasets_for(args)
    sampler = EpochSampler(len(train_set), rank, world, args.batch_size, args.seed)
    if sampler.steps() == 0:
        raise SystemExit("fewer training images per process than one batch")
    train_loader = DataLoader(train_set, args.batch_size, sampler=sampler,
                              num_workers=args.workers, drop_last=True)
    test_shard = torch.utils.data.Subset(test_set, range(rank, len(test_set), world))
    test_loader = DataLoader(test_shard, 256, num_workers=args.workers)

    model = build_model(args, classes, distributed)
    params_model = model  # what the checkpoint saves: the plain torchvision/timm keys
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    steps_per_epoch = sampler.steps()
    # The schedule spans --epochs; --max-steps only stops early, so an interrupted run is
    # a prefix of the full one and resumes into it exactly.
    schedule_steps = args.epochs * steps_per_epoch
    total_steps = min(schedule_steps, args.max_steps or schedule_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, schedule_steps)
                                                 / schedule_steps)))
    scaler = torch.amp.GradScaler(enabled=args.amp and args.device.startswith("cuda"))
    step, history = 0, []
    if args.resume and args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=args.device, weights_only=False)
        params_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, history = state["step"], state["history"]
        log(f"resumed from {args.checkpoint} at step {step} "
            f"(epoch {step // steps_per_epoch + 1}, batch {step % steps_per_epoch})")
    if distributed:
        ids = [torch.cuda.current_device()] if args.device.startswith("cuda") else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        model = torch.compile(model)

    def save() -> None:
        if main_process and args.checkpoint is not None:
            torch.save({"model": params_model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                        "step": step, "epoch": step // steps_per_epoch, "history": history,
                        "args": vars(args)}, args.checkpoint)

    log(f"{args.model} ({args.backend}) on {args.device} x{world}: {len(train_set)} training "
        f"images, {steps_per_epoch} steps per epoch, {total_steps} steps")
    loss_fn = nn.CrossEntropyLoss()
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, skip)
        model.train()
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}", main_process)
        sums = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
        start = time.perf_counter()
        for x, y in train_loader:
            x, y = to_device(x, y, args)
            with autocast(args):
                logits = model(x)
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            step += 1
            sums += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(),
                                  len(y)], dtype=torch.float64)
            rate = sums[2].item() * world / (time.perf_counter() - start)
            bar.update(step - epoch * steps_per_epoch, sums[0].item() / sums[2].item(),
                       sums[1].item() / sums[2].item(), rate)
            if step >= total_steps:
                break
        bar.close()
        loss_sum, correct, seen = all_sum(sums.tolist(), args.device)
        test_acc = evaluate(model, test_loader, args)
        # A resumed epoch replaces the entry its interrupted part left.
        history = [h for h in history if h["epoch"] != epoch + 1]
        history.append({"epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen,
                        "train_acc": correct / seen, "test_acc": test_acc})
        log(f"epoch {epoch + 1} step {step}: train loss {loss_sum / seen:.4f}, "
            f"train accuracy {100 * correct / seen:.1f}%, test accuracy {100 * test_acc:.1f}%")
        save()
    if args.plot is not None and main_process and history:
        plot(history, args.plot)
    test_acc = evaluate(model, test_loader, args)
    log(f"test accuracy: {100 * test_acc:.1f}%")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
