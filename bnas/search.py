"""The BNAS search: PC-DARTS bilevel training with stage-wise operation space reduction.

Per stage (method.md section 6): ``L`` super-network epochs (weights with SGD on the train split,
alpha/beta with Adam on the validation split, first order; alpha/beta frozen for the first ``W``
epochs of the first stage), then the reduction strategy removes one operation per edge. Every
strategy runs the same number of stages and super-network epochs (``none`` simply removes nothing),
so their costs compare directly. At the end the genotype is derived (method.md section 7) and scored
by ``derived_val_acc``: the validation accuracy of the derived discrete cells run with the
super-network's shared weights, the one figure comparable across all pruning strategies.

Resumable: the whole state (weights, alpha/beta, optimizer states, remaining ops, strategy state,
history, metrics) is checkpointed after every super-network epoch and after every reduction; every
epoch and every reduction reseeds its random streams from (seed, position), so a killed-and-resumed
search on the CPU ends with the same genotype as an uninterrupted one.

Core only: no Ray, no MLflow. ``python -m bnas search --config FILE`` runs it from a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnas.binarization import BinarySpec, projection_loss, reset_projection_terms
from bnas.config import ExperimentConfig, load_config
from bnas.data import reseed_loader, search_loaders
from bnas.genotype import Genotype
from bnas.reduction import ReductionContext, make_strategy
from bnas.runtime import (
    AverageMeter,
    accuracy,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    format_duration,
    resolve_device,
    seed_everything,
)
from bnas.supernet import CELL_TYPES, Selection, SuperNetwork, edge_endpoints

CHECKPOINT = "checkpoint.pt"


@dataclass
class SearchResult:
    genotype: Genotype
    history: list[dict]
    metrics: list[dict]
    final: dict[str, Any]
    out_dir: Path
    stages: list[dict] = field(default_factory=list)


def _seed(base: int, *parts: int) -> int:
    """A seed for one position of the run (stage, epoch, ...), independent of what ran before."""
    s = int(base)
    for p in parts:
        s = (s * 1_000_003 + int(p) + 7_919) % 2**62
    return s


def _reseed(loader: torch.utils.data.DataLoader, seed: int) -> None:
    """Order from ``seed``, augmentation from ``seed + 2`` (see :func:`bnas.data.reseed_loader`)."""
    reseed_loader(loader, seed, seed + 2)


def _batches(
    loader: torch.utils.data.DataLoader, cap: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i, batch in enumerate(loader):
        if cap is not None and i >= cap:
            return
        yield batch


def _cycle(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


@contextlib.contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Evaluate with per-batch BN statistics, leaving the running statistics untouched [D].

    During search the running statistics mix every candidate operation and every sampled
    sub-network, so they describe no single architecture; batch statistics do (a common one-shot
    NAS practice). Momentum 0 keeps ``running = (1 - 0) * running``.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in bns]
    net.eval()
    for m in bns:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (tr, mom) in zip(bns, saved, strict=True):
            m.training, m.momentum = tr, mom


def _rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MiB.

    Read from /proc: ``getrusage``'s ``ru_maxrss`` survives ``exec`` on Linux, so a search started by a
    bigger parent process would report the parent's peak. Falls back to ``ru_maxrss`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mib() -> float:
    return _rss_mib("VmHWM")


class Search:
    """One BNAS search (see the module docstring). ``run()`` does all of it, resuming if it can."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | Path,
        log: Callable[[str], None] | None = print,
        resume: bool = True,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir).absolute()
        self.log = log or (lambda s: None)
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        sc, rc = cfg.search, cfg.reduction
        seed_everything(cfg.seed)
        self.train_loader, self.val_loader, self.info = search_loaders(
            cfg.data, sc.batch_size, cfg.seed, self.device
        )
        self.sub_loader = None
        # Resident memory once the data is loaded: the search's own memory is what the peak adds.
        self.rss_after_data_mib = _rss_mib("VmRSS")
        self.spec = BinarySpec.from_config(cfg.binarization)
        self.strategy = make_strategy(rc)
        n_ops = len(sc.ops)
        self.n_stages = rc.stages if rc.stages is not None else max(n_ops - 1, 1)
        if self.strategy.reduces and self.n_stages > n_ops - 1:
            from bnas.config import ConfigError

            raise ConfigError(
                f"{self.n_stages} stages would remove more than the {n_ops - 1} ops that can "
                f"go from {n_ops} per edge",
                key="reduction.stages",
            )
        self.total_epochs = self.n_stages * rc.epochs_per_stage
        self.net = self._build_net(None)
        self.arch_opt = torch.optim.Adam(
            self.net.arch_parameters(),
            lr=sc.arch_lr,
            betas=(sc.arch_beta1, 0.999),
            weight_decay=sc.arch_weight_decay,
        )
        self.w_opt = self._weight_optimizer({})
        # Position: the next stage/epoch to run; an epoch index == L means "reduction is next".
        self.stage, self.epoch_in_stage, self.global_epoch = 0, 0, 0
        self.history: list[dict] = []
        self.metrics: list[dict] = []
        self.stages: list[dict] = []
        self.elapsed_before = 0.0
        self.resumed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and (self.out_dir / CHECKPOINT).is_file():
            self._load(self.out_dir / CHECKPOINT)

    # ------------------------------------------------------------------ building blocks
    def _build_net(self, edge_ops: dict | None) -> SuperNetwork:
        sc = self.cfg.search
        torch.manual_seed(self.cfg.seed)
        return SuperNetwork(
            sc.init_channels,
            self.info.num_classes,
            sc.layers,
            sc.ops,
            sc.sampling_k,
            self.spec,
            steps=sc.nodes,
            multiplier=sc.nodes,
            stem_multiplier=sc.stem_multiplier,
            in_channels=self.info.in_channels,
            edge_ops=edge_ops,
        ).to(self.device)

    def _weight_optimizer(self, momentum_by_name: dict[str, torch.Tensor]) -> torch.optim.SGD:
        """SGD over the current weights; momentum buffers carried over by parameter name, because
        removing operations changes the parameter list."""
        sc = self.cfg.search
        named = list(self.net.named_weight_parameters())
        opt = torch.optim.SGD(
            [p for _, p in named], lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay
        )
        for name, p in named:
            if name in momentum_by_name:
                opt.state[p]["momentum_buffer"] = momentum_by_name[name].to(p.device).clone()
        return opt

    def _momentum_by_name(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, p in self.net.named_weight_parameters():
            buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[name] = buf.detach().cpu()
        return out

    def _lr(self, epoch: int) -> float:
        """Cosine annealing over all super-network epochs (PC-DARTS)."""
        sc = self.cfg.search
        return sc.lr_min + 0.5 * (sc.lr - sc.lr_min) * (1 + math.cos(math.pi * epoch / self.total_epochs))

    def _set_lr(self, lr: float) -> None:
        for g in self.w_opt.param_groups:
            g["lr"] = lr

    def _weight_step(
        self, x: torch.Tensor, y: torch.Tensor, selection: Selection | None
    ) -> tuple[float, float]:
        sc = self.cfg.search
        reset_projection_terms(self.net)
        logits = self.net(x, selection)
        loss = F.cross_entropy(logits, y)
        total = loss
        if self.spec.method == "pcnn":
            total = loss + projection_loss(self.net, self.spec.pcnn_lambda, self.spec.pcnn_eta).to(
                loss.device
            )
        self.w_opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(self.net.weight_parameters(), sc.grad_clip)
        self.w_opt.step()
        # alpha/beta also received gradients through this pass; they are not the weight
        # optimizer's, so drop them rather than let them leak into the next architecture step.
        for p in self.net.arch_parameters():
            p.grad = None
        return loss.item(), accuracy(logits.detach(), y)[0]

    def _arch_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """First-order DARTS: minimise the validation loss over alpha and beta only."""
        arch = self.net.arch_parameters()
        loss = F.cross_entropy(self.net(x), y)
        grads = torch.autograd.grad(loss, arch)
        self.arch_opt.zero_grad(set_to_none=True)
        for p, g in zip(arch, grads, strict=True):
            p.grad = g
        self.arch_opt.step()

    @torch.no_grad()
    def evaluate(self, selection: Selection | None = None, cap: int | None = None) -> tuple[float, float]:
        """(loss, accuracy) on the validation split, with batch statistics (see batch_statistics)."""
        loss_m, acc_m = AverageMeter(), AverageMeter()
        _reseed(self.val_loader, _seed(self.cfg.seed, 99))
        with batch_statistics(self.net):
            for x, y in _batches(self.val_loader, cap):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                logits = self.net(x, selection)
                loss_m.update(F.cross_entropy(logits, y).item(), len(y))
                acc_m.update(accuracy(logits, y)[0], len(y))
        self.net.train()
        return loss_m.avg, acc_m.avg

    # ------------------------------------------------------------------ one super-network epoch
    def _train_epoch(self) -> dict[str, Any]:
        sc, rc = self.cfg.search, self.cfg.reduction
        ep = self.global_epoch
        torch.manual_seed(_seed(self.cfg.seed, 1, ep))
        _reseed(self.train_loader, _seed(self.cfg.seed, 2, ep))
        _reseed(self.val_loader, _seed(self.cfg.seed, 3, ep))
        lr = self._lr(ep)
        self._set_lr(lr)
        warmup = self.stage == 0 and self.epoch_in_stage < rc.warmup_epochs
        self.net.train()
        loss_m, acc_m = AverageMeter(), AverageMeter()
        val_iter = _cycle(self.val_loader)
        t0 = time.perf_counter()
        for x, y in _batches(self.train_loader, sc.max_batches_per_epoch):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if not warmup:
                xv, yv = next(val_iter)
                self._arch_step(xv.to(self.device, non_blocking=True), yv.to(self.device, non_blocking=True))
            loss, acc = self._weight_step(x, y, None)
            loss_m.update(loss, len(y))
            acc_m.update(acc, len(y))
        val_loss, val_acc = self.evaluate(cap=sc.max_batches_per_epoch)
        return {
            "stage": self.stage + 1,
            "epoch": ep + 1,
            "total_epochs": self.total_epochs,
            "train_loss": loss_m.avg,
            "train_acc": acc_m.avg,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "ops_per_edge": self.net.ops_per_edge(),
            "lr": lr,
            "warmup": warmup,
            "epoch_time_s": time.perf_counter() - t0,
        }

    # ------------------------------------------------------------------ sampled sub-networks
    def _subnet_loader(self) -> torch.utils.data.DataLoader:
        """The sampled sub-networks' train loader (their own batch size), made on first use."""
        if self.sub_loader is None:
            self.sub_loader, _, _ = search_loaders(
                self.cfg.data, self.cfg.reduction.subnet_batch_size, self.cfg.seed, self.device
            )
        return self.sub_loader

    def _evaluate_subnet(self, selection: Selection) -> float:
        """Train the sub-network for V epochs with the shared weights, return its val accuracy."""
        rc, sc = self.cfg.reduction, self.cfg.search
        sub_loader = self._subnet_loader()
        self.net.train()
        for _ in range(rc.subnet_epochs):
            for x, y in _batches(sub_loader, rc.subnet_max_batches):
                self._weight_step(
                    x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), selection
                )
        return self.evaluate(selection, cap=sc.max_batches_per_epoch)[1]

    def _reduce(self) -> list[dict]:
        torch.manual_seed(_seed(self.cfg.seed, 4, self.stage))
        if self.strategy.samples:
            _reseed(self._subnet_loader(), _seed(self.cfg.seed, 5, self.stage))
        self._set_lr(self._lr(self.global_epoch))
        with torch.no_grad():
            probs = {t: [p.tolist() for p in self.net.op_probabilities(t)] for t in CELL_TYPES}
        ctx = ReductionContext(
            edge_ops={t: [list(e) for e in self.net.edge_ops[t]] for t in CELL_TYPES},
            probs=probs,
            evaluate=self._evaluate_subnet,
            rng=random.Random(_seed(self.cfg.seed, 6, self.stage)),
            log=self.log,
        )
        drops = self.strategy.choose_drops(ctx)
        records = []
        for d in drops:
            self.net.remove_op(d.cell_type, d.edge, d.op)
            rec = d.to_dict()
            rec.update(
                stage=self.stage + 1,
                alpha_prob=dict(
                    zip(ctx.edge_ops[d.cell_type][d.edge], probs[d.cell_type][d.edge], strict=True)
                ),
                left=list(self.net.edge_ops[d.cell_type][d.edge]),
            )
            records.append(rec)
        # Removing ops changed the weight list: rebuild SGD, carrying momentum by name.
        self.w_opt = self._weight_optimizer(self._momentum_by_name())
        return records

    # ------------------------------------------------------------------ checkpointing
    def _state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "config": self.cfg.to_dict(),
            "edge_ops": self.net.edge_ops,
            "net": self.net.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "w_momentum": self._momentum_by_name(),
            "strategy": self.strategy.state_dict(),
            "position": {
                "stage": self.stage,
                "epoch_in_stage": self.epoch_in_stage,
                "global_epoch": self.global_epoch,
            },
            "history": self.history,
            "metrics": self.metrics,
            "stages": self.stages,
            "elapsed": self.elapsed_before + (time.perf_counter() - self._t_start),
        }

    def _save(self) -> None:
        atomic_save(self._state(), self.out_dir / CHECKPOINT)

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config") != self.cfg.to_dict():
            raise ValueError(
                f"{path} was written by a search with other settings; use another output folder or "
                "resume=False (--no-resume) to start over"
            )
        self.net = self._build_net(state["edge_ops"])
        self.net.load_state_dict(state["net"])
        self.arch_opt = torch.optim.Adam(
            self.net.arch_parameters(),
            lr=self.cfg.search.arch_lr,
            betas=(self.cfg.search.arch_beta1, 0.999),
            weight_decay=self.cfg.search.arch_weight_decay,
        )
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.w_opt = self._weight_optimizer(state["w_momentum"])
        self.strategy.load_state_dict(state["strategy"])
        pos = state["position"]
        self.stage, self.epoch_in_stage, self.global_epoch = (
            pos["stage"],
            pos["epoch_in_stage"],
            pos["global_epoch"],
        )
        self.history, self.metrics, self.stages = state["history"], state["metrics"], state["stages"]
        self.elapsed_before = state["elapsed"]
        self.resumed = True
        self.log(
            f"resumed from {path}: stage {self.stage + 1}, epoch {self.global_epoch}/{self.total_epochs}"
        )

    # ------------------------------------------------------------------ the whole search
    def run(self, on_epoch: Callable[[dict], None] | None = None) -> SearchResult:
        cfg, rc = self.cfg, self.cfg.reduction
        self._t_start = time.perf_counter()
        atomic_write_json(cfg.to_dict(), self.out_dir / "config.json")
        self.log(
            f"search: {cfg.binarization.method}, K={cfg.search.sampling_k}, strategy={rc.strategy}, "
            f"{self.n_stages} stages x {rc.epochs_per_stage} epochs, {len(cfg.search.ops)} ops/edge, "
            f"device {self.device}, out {self.out_dir}"
        )
        epochs_done_here, t_here = 0, time.perf_counter()
        while self.stage < self.n_stages:
            t_stage = time.perf_counter()
            stage_train_s = 0.0
            while self.epoch_in_stage < rc.epochs_per_stage:
                m = self._train_epoch()
                stage_train_s += m["epoch_time_s"]
                self.global_epoch += 1
                self.epoch_in_stage += 1
                m["elapsed_s"] = self.elapsed_before + (time.perf_counter() - self._t_start)
                self.metrics.append(m)
                self._save()
                with (self.out_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(m) + "\n")
                epochs_done_here += 1
                per_epoch = (time.perf_counter() - t_here) / epochs_done_here
                eta = per_epoch * (self.total_epochs - self.global_epoch)
                self.log(
                    f"[stage {self.stage + 1}/{self.n_stages} epoch {self.epoch_in_stage}/"
                    f"{rc.epochs_per_stage} | {self.global_epoch}/{self.total_epochs}] "
                    f"train_loss {m['train_loss']:.3f} train_acc {m['train_acc']:.3f} "
                    f"val_acc {m['val_acc']:.3f} ops/edge {m['ops_per_edge']:.2f}"
                    f"{' (warm-up)' if m['warmup'] else ''} | {m['epoch_time_s']:.1f}s/epoch, "
                    f"eta {format_duration(eta)}"
                )
                if on_epoch is not None:
                    on_epoch(dict(m))
            t_red = time.perf_counter()
            records = self._reduce() if self.strategy.reduces else []
            reduce_s = time.perf_counter() - t_red
            for r in records:
                self.history.append(r)
            self.stages.append(
                {
                    "stage": self.stage + 1,
                    "train_s": stage_train_s,
                    "reduce_s": reduce_s,
                    "wall_s": time.perf_counter() - t_stage,
                    "ops_per_edge_after": self.net.ops_per_edge(),
                    "peak_rss_mib": _peak_rss_mib(),
                    "peak_cuda_mib": (
                        torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None
                    ),
                }
            )
            if records:
                self.log(
                    f"stage {self.stage + 1}: removed {len(records)} ops in {reduce_s:.1f}s; "
                    f"{self.net.ops_per_edge():.2f} ops/edge left"
                )
            self.stage += 1
            self.epoch_in_stage = 0
            self._save()
        return self._finish()

    def _finish(self) -> SearchResult:
        genotype, choice, fallbacks = derive_genotype(self.net, self.history)
        _, derived_acc = self.evaluate(choice, cap=self.cfg.search.max_batches_per_epoch)
        elapsed = self.elapsed_before + (time.perf_counter() - self._t_start)
        final = {
            "derived_val_acc": derived_acc,
            "supernet_val_acc": self.metrics[-1]["val_acc"] if self.metrics else float("nan"),
            "search_time_s": elapsed,
            "epochs": self.global_epoch,
            "stages": len(self.stages),
            "genotype_digest": genotype.digest,
            "derivation_fallbacks": fallbacks,
            "peak_rss_mib": _peak_rss_mib(),
            "peak_rss_after_data_mib": self.rss_after_data_mib,
            "device": str(self.device),
            "resumed": self.resumed,
        }
        genotype.save(self.out_dir / "genotype.json")
        atomic_write_json(self.history, self.out_dir / "history.json")
        atomic_write_json({**final, "stage_times": self.stages}, self.out_dir / "final.json")
        atomic_write_text(genotype.describe() + "\n", self.out_dir / "genotype.txt")
        self.log(
            f"derived genotype {genotype.digest} (val_acc with shared weights {derived_acc:.4f}, "
            f"search {format_duration(elapsed)}):\n{genotype.describe()}"
        )
        return SearchResult(genotype, self.history, self.metrics, final, self.out_dir, self.stages)


def derive_genotype(
    net: SuperNetwork,
    history: list[dict] | None = None,
) -> tuple[Genotype, Selection, list[dict]]:
    """The discrete cells of a (reduced) super-network (method.md section 7, following PC-DARTS).

    Every edge keeps its most likely remaining operation other than ``none`` (by softmax(alpha) over
    the remaining ops). Each intermediate node keeps the 2 incoming edges with the largest strength
    softmax(beta)_edge * softmax(alpha)_kept-op. An edge whose only remaining op is ``none`` falls
    back to the last non-``none`` op removed from it (from ``history``) with strength 0, so a node
    still gets two inputs [D]. Returns the genotype, the matching :class:`Selection` (for scoring
    with the shared weights) and the fallbacks used.
    """
    history = history or []
    fallbacks: list[dict] = []
    cells: dict[str, list[tuple[str, int]]] = {}
    choice: dict[str, list[str | None]] = {}
    with torch.no_grad():
        for t in CELL_TYPES:
            probs = net.op_probabilities(t)
            edge_w = net.edge_weights(t)
            ends = edge_endpoints(net.steps)
            best: list[tuple[str, float]] = []
            for e, names in enumerate(net.edge_ops[t]):
                cands = [(float(p), o) for o, p in zip(names, probs[e].tolist(), strict=True) if o != "none"]
                if cands:
                    p, op = max(cands, key=lambda c: c[0])
                    best.append((op, float(edge_w[e]) * p))
                else:
                    removed = [
                        h["op"]
                        for h in history
                        if h["cell_type"] == t and h["edge"] == e and h["op"] != "none"
                    ]
                    op = removed[-1] if removed else "skip_connect"
                    fallbacks.append({"cell_type": t, "edge": e, "op": op})
                    best.append((op, 0.0))
            # What the shared-weight evaluation runs: a fallback op no longer exists in the
            # super-network, so its edge runs what is left there (``none``: it contributes zeros).
            runnable = [
                op if op in net.edge_ops[t][e] else net.edge_ops[t][e][0] for e, (op, _) in enumerate(best)
            ]
            edges: list[tuple[str, int]] = []
            sel: list[str | None] = [None] * len(best)
            for node in range(2, 2 + net.steps):
                idx = [e for e, (_, dst) in enumerate(ends) if dst == node]
                top = sorted(idx, key=lambda e: (-best[e][1], e))[:2]
                for e in sorted(top, key=lambda e: ends[e][0]):
                    edges.append((best[e][0], ends[e][0]))
                    sel[e] = runnable[e]
            cells[t] = edges
            choice[t] = sel
    concat = tuple(range(2, 2 + net.steps))
    genotype = Genotype(tuple(cells["normal"]), concat, tuple(cells["reduce"]), concat)
    return genotype, Selection(choice["normal"], choice["reduce"]), fallbacks


def run_search(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = print,
) -> SearchResult:
    """Run (or resume) one BNAS search; see :class:`Search`. Files land in ``out_dir``."""
    return Search(cfg, out_dir, log=log, resume=resume).run(on_epoch)


def main(argv: list[str] | None = None) -> int:
    """``python -m bnas search --config FILE [--set key=value ...] --out DIR [--no-resume]``."""
    p = argparse.ArgumentParser(prog="python -m bnas search", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML experiment file (see configs/); defaults apply when omitted")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set search.sampling_k=4 (repeatable)",
    )
    p.add_argument("--data-root", help="dataset folder (sets data.root)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets device)")
    p.add_argument(
        "--out", required=True, help="output folder (checkpoint, genotype.json, history.json, ...)"
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if the folder has a checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only the final genotype")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={Path(args.data_root).absolute()}")
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    if args.no_resume and (out / CHECKPOINT).exists():
        (out / CHECKPOINT).unlink()
        (out / "metrics.jsonl").unlink(missing_ok=True)
    res = run_search(cfg, out, resume=not args.no_resume, log=None if args.quiet else print)
    print(
        json.dumps(
            {
                "genotype": res.genotype.to_dict(),
                "digest": res.genotype.digest,
                **{k: res.final[k] for k in ("derived_val_acc", "search_time_s")},
            }
        )
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
