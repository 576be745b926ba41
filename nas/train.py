"""``python -m nas.train ARCH.json --data ... --epochs N``: train an exported architecture from
scratch (train-time form: DO-Conv/DEConv over-parameterised), fold it for deployment, and report
its test accuracy.  This is the number to trust; supernet accuracies only rank candidates."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

import space
from space.ops import deploy, set_progress

from .checks import DECAY, FRACTION, LR, POSITIVE_INT, SEED, check_numbers, resolve_device
from .cli import OneLineParser, _formats
from .data import DataError, Splits, load_dataset
from .flops import count, params
from .interrupt import check as check_interrupt
from .supernet import FAST_FORMAT, accuracy, cosine_sgd, train_step


class Trainer:
    """Stand-alone training of one architecture that can stop and go on: ``run(epochs)`` trains
    that many more epochs along one cosine schedule over ``total_epochs``, so successive halving
    can score a candidate after a few epochs and continue only the survivors, each ending exactly
    where an uninterrupted run of ``total_epochs`` would."""

    def __init__(self, arch, train_batches, total_epochs: int, lr: float = 0.05, weight_decay: float = 3e-4,
                 drop_path: float = 0.0, seed: int = 0, device: str = "cpu", channels_last: bool = True):
        torch.manual_seed(seed)
        self.device, self.batches, self.drop_path = device, train_batches.fresh(seed), drop_path
        self.memory_format = FAST_FORMAT if channels_last else torch.contiguous_format  # see nas.supernet
        self.net = space.build(arch, deploy=False).to(device, memory_format=self.memory_format)
        self.total_epochs = max(1, total_epochs)
        self._total_steps = self.total_epochs * len(train_batches)
        self.opt, self.sched = cosine_sgd(self.net, lr, weight_decay, self._total_steps)
        self.epochs_done, self.step, self.history = 0, 0, []
        self._batch_iter = None  # the epoch losses() is part-way through

    def run(self, epochs: int, progress: bool = False, val=None) -> None:
        net = self.net
        with tqdm(total=epochs * len(self.batches), desc="training", unit="batch", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            for _ in range(epochs):
                net.train()
                if hasattr(net, "set_drop_path"):  # DARTS ramps it over training, MetaFormers over depth
                    net.set_drop_path(self.drop_path, self.epochs_done / self.total_epochs)
                loss_sum = seen = 0
                for x, y in self.batches:
                    loss_sum += self._step(x, y) * len(y)
                    seen += len(y)
                    bar.update(1)
                    bar.set_postfix(epoch=f"{self.epochs_done + 1}/{self.total_epochs}",
                                    loss=f"{loss_sum / seen:.3f}")
                self.epochs_done += 1
                rec = {"epoch": self.epochs_done, "loss": loss_sum / max(seen, 1)}
                if val is not None:
                    rec["val_acc"] = self.accuracy(val)
                self.history.append(rec)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        check_interrupt()
        x = x.to(self.device, memory_format=self.memory_format)
        set_progress(self.net, self.step / self._total_steps)
        loss, _ = train_step(self.net, self.opt, self.sched, x, y.to(self.device))
        self.step += 1
        return loss.item()

    def losses(self, steps: int) -> List[float]:
        """The training losses of the next ``steps`` minibatches (what the ``tse`` estimator sums).
        Calls go on through one epoch's batch order, so losses(8) then losses(8) train what
        losses(16) trains; an epoch ends and the next begins where needed."""
        out: List[float] = []
        self.net.train()
        while len(out) < steps:
            if self._batch_iter is None:
                self._batch_iter = iter(self.batches)  # a new epoch: its own shuffle
            step = next(self._batch_iter, None)
            if step is None:
                self._batch_iter = None
                continue
            out.append(self._step(*step))
        return out

    def accuracy(self, batches) -> float:
        return accuracy(self.net, batches, self.memory_format)

    def deployed(self) -> nn.Module:
        set_progress(self.net, 1.0)
        return deploy(self.net.to(memory_format=torch.contiguous_format)).eval().to(self.device)


def train(arch, splits: Splits, epochs: int, lr: float = 0.05, weight_decay: float = 3e-4,
          drop_path: float = 0.0, seed: int = 0, progress: bool = True, device: str = "cpu",
          channels_last: bool = True, eval_every_epoch: bool = True) -> Dict[str, object]:
    tr = Trainer(arch, splits.train, epochs, lr, weight_decay, drop_path, seed, device, channels_last)
    tr.run(epochs, progress=progress, val=splits.val if eval_every_epoch else None)
    net = tr.deployed()  # folding builds CPU-side modules: count on the CPU, score where trained
    return {"net": net, "history": tr.history, "val_acc": accuracy(net, splits.val),
            "test_acc": accuracy(net, splits.test)}


def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m nas.train", description=__doc__)
    p.add_argument("arch", help="architecture JSON (archs/<trial>.json or best.json)")
    p.add_argument("--data", default=None, help="as search.py --data (default: $NAS_DATA, cached CIFAR-10, or digits)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=96, help="DARTS' value")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=3e-4)
    p.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth; default: the family's official recipe (VAN 0.1-0.2, BiFormer 0.1-0.15, "
                        "SwiftFormer 0; DARTS 0 here, its 0.2 is for 600 epochs)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--out", default=None, help="write the result JSON (and weights .pt) here")
    p.add_argument("--export", type=_formats, default=None, metavar="FORMATS",
                   help="with --out: the trained network into <out>_export/ in these formats, checked, with a model "
                        "card (default py,torchscript,pt2,onnx; 'none' skips)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.export is None:
        from .export import FORMATS
        a.export = list(FORMATS)
    try:
        check_numbers(a, [("epochs", "--epochs", *POSITIVE_INT), ("batch_size", "--batch-size", *POSITIVE_INT),
                          ("lr", "--lr", *LR), ("weight_decay", "--weight-decay", *DECAY),
                          ("drop_path", "--drop-path", lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
                          ("val_fraction", "--val-fraction", *FRACTION), ("seed", "--seed", *SEED)])
        device = resolve_device(a.device)
    except ValueError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if a.out and Path(a.out).is_dir():
        print(f"{p.prog}: error: --out {a.out} is a folder; name the result file, e.g. {Path(a.out) / 'result.json'}",
              file=sys.stderr)
        return 2
    try:
        arch = space.load_arch(a.arch)
        ds = load_dataset(a.data, seed=a.seed)
    except (space.ArchError, DataError, space.UnknownName) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if a.out:  # before training, not after: an unwritable --out must not cost the trained result
        try:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            probe = Path(a.out).with_name(f".{Path(a.out).name}.probe")
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            print(f"{p.prog}: error: cannot write --out {a.out}: {e.strerror}", file=sys.stderr)
            return 2
    if tuple(ds.input_size) != tuple(arch.input_size):
        print(f"note: the architecture was counted at {tuple(arch.input_size)}; training and testing at the "
              f"data's {tuple(ds.input_size)}", file=sys.stderr)
    splits = Splits.make(ds, a.batch_size, a.val_fraction, a.seed, calib_batches=1)
    drop_path = a.drop_path if a.drop_path is not None else space.SPACES[arch.space].recipe_drop_path(arch)
    t0 = time.time()
    res = train(arch, splits, a.epochs, a.lr, a.weight_decay, drop_path, a.seed, progress=not a.quiet, device=device)
    net = res["net"].cpu()
    out = {"arch_file": a.arch, "arch_hash": arch.arch_hash, "data": ds.describe(), "epochs": a.epochs,
           "test_acc": res["test_acc"], "val_acc": res["val_acc"], "params": params(net),
           "flops": count(net, [(1, *arch.input_size)]), "seconds": round(time.time() - t0, 1),
           "history": res["history"], "seed": a.seed, "drop_path": drop_path}
    if a.out:
        path = Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        torch.save(net.state_dict(), path.with_suffix(".pt"))
    print(f"test accuracy: {res['test_acc']:.4f} ({ds.name}, {len(ds.y_test)} test images, {a.epochs} epochs); "
          f"val {res['val_acc']:.4f}; {out['params']:,} params, {out['flops']:,} FLOPs (multiply-adds)")
    if a.out and a.export:
        from .export.model import export_model

        where = Path(a.out).with_name(Path(a.out).stem + "_export")
        print(f"exporting the trained network into {where}/:")
        export_model(arch, where, a.export, net=net, about={
            "val_acc": res["val_acc"], "test_acc": res["test_acc"], "weights": f"trained ({a.epochs} epochs, {ds.name})",
            "accuracy_source": f"stand-alone training on {ds.name}, {a.epochs} epochs"},
            command=" ".join(["python -m nas.train"] + list(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
