"""The BNAS search: PC-DARTS bilevel training with stage-wise operation space reduction.

Per stage (method.md section 6): ``L`` super-network epochs (weights with SGD on the train split,
alpha/beta with Adam on the validation split, first order, :class:`~bnas.architect.Architect`;
alpha/beta frozen for the first ``W`` epochs of the first stage), then the reduction strategy removes
one operation per edge. Every strategy runs the same stages and epochs (``none`` removes nothing), so
their costs compare directly. At the end the genotype is derived (method.md section 7,
:func:`bnas.derivation.derive_genotype`) and scored by ``derived_val_acc``, the validation accuracy
of the derived cells with the shared weights: the one figure comparable across all strategies.

The SGD weight optimizer lives for the whole search (a reduction prunes the removed operations'
parameters and momentum, :func:`bnas.training.prune_optimizer`), so ``CosineAnnealingLR`` spans all
``stages * L`` epochs (PC-DARTS); sampled sub-networks train at the next epoch's learning rate.

The search is a loop of epochs over the run skeleton of :mod:`bnas.training`: :class:`SearchState` is
the checkpoint (every ``search.checkpoint_every`` epochs and after every reduction; the identity rule
lets a search resume on another device or data path); the super-network is validated every
``search.validate_every`` epochs and in the last; every epoch and reduction reseeds its random
streams from (seed, position) (:func:`~bnas.training.derive_seed`), so a killed-and-resumed search on
the CPU ends with the uninterrupted genotype; the caller's random state is left untouched; wall
seconds per phase (:data:`PHASES`) go to ``final.json``. Core only: no Ray, no MLflow, no argparse.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnas.accel import FastPath
from bnas.architect import Architect
from bnas.binarization import BinarySpec, projection_loss, reset_projection_terms
from bnas.config import ExperimentConfig, require_phase
from bnas.data import describe_classes, is_class_folder, search_loaders
from bnas.derivation import derive_genotype
from bnas.diagnostics import degenerate_cells, param_free_share
from bnas.genotype import Genotype
from bnas.logs import info
from bnas.networks import NETWORKS
from bnas.reduction import ReductionContext, make_strategy
from bnas.runtime import (
    AverageMeter,
    Progress,
    accuracy,
    format_duration,
    resolve_device,
    rss_mib,
    seed_everything,
)
from bnas.search_state import SearchState
from bnas.subnet_scoring import _EVAL, _REDUCE_SUBNET, SharedWeightScoring, _cycle, _reseed, batch_statistics
from bnas.supernet import CELL_TYPES, Selection
from bnas.training import PhaseTimer, RunFolder, derive_seed, isolated_rng, prune_optimizer, timed_batches

#: Seed streams of :func:`~bnas.training.derive_seed` (the first part after the base seed); those of the
#: sub-networks and the proxy (5, 7, 8, 99) are :mod:`bnas.subnet_scoring`'s.
_EPOCH_TORCH, _EPOCH_TRAIN, _EPOCH_VAL = 1, 2, 3
_REDUCE_TORCH, _REDUCE_RNG = 4, 6

#: Result files of a search besides the run skeleton's (removed when a search starts over).
OUTPUTS = ("genotype.json", "genotype.txt", "history.json", "diagnostics.json")
#: The timed phases (``final.json["phase_times_s"]`` and ``stage_times[i]["phases"]``): batch loading
#: (every split, every pass), the weight and architecture steps of the super-network epochs, the
#: per-epoch validation, the sampled sub-networks' training and evaluation, file writes, and the
#: final derivation with its shared-weight evaluation.
PHASES = (
    "data",
    "weight_step",
    "arch_step",
    "validation",
    "subnet_train",
    "subnet_eval",
    "checkpoint",
    "derive",
)

#: The cell figures that ``diagnostics.json`` repeats beside its per-stage decisions (and both proxies).
CELL_DIAGNOSTICS = ("param_free_normal", "param_free_reduce", "degenerate_cells", "param_free_capped")


@dataclass
class SearchResult:
    """What a search returns: the genotype, the reduction history, the per-epoch metrics, the final
    figures (``final.json`` without ``stage_times``), the output folder and the per-stage records."""

    genotype: Genotype
    history: list[dict]
    metrics: list[dict]
    final: dict[str, Any]
    out_dir: Path
    stages: list[dict] = field(default_factory=list)


class Search(SharedWeightScoring):
    """One BNAS search (see the module docstring). ``run()`` does all of it, resuming if it can.

    The constructor checks the output folder first: with ``resume`` a checkpoint of the same run is
    continued and one of another run raises :class:`~bnas.errors.ConfigError` before any work;
    without ``resume`` (or without a checkpoint) earlier results in the folder are removed.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | Path,
        log: Callable[[str], None] | None = info,
        resume: bool = True,
    ) -> None:
        self.cfg = cfg
        self.log = log or (lambda s: None)
        self.device = resolve_device(cfg.device)
        self.fast = FastPath.from_config(cfg.runtime, self.device)  # bf16, channels_last, ... (bnas.accel)
        sc, rc = cfg.search, cfg.reduction
        n_ops = len(sc.candidate_ops())
        self.n_stages = rc.stages if rc.stages is not None else max(n_ops - 1, 1)
        # (more stages than ops can go is refused by the configuration: ExperimentConfig's rules)
        self.total_epochs = self.n_stages * rc.epochs_per_stage
        require_phase(cfg, "search")  # a split smaller than one batch: refused before any folder exists
        self.folder = RunFolder(out_dir, cfg.result_identity(), OUTPUTS)
        self.out_dir = self.folder.path
        ckpt = self.folder.open(resume, cfg.to_dict())
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.timer = PhaseTimer(self.device, PHASES)
        self.sub_loader: torch.utils.data.DataLoader | None = None
        # The validation batches that score sub-networks, drawn once per stage: (stage, batches).
        self._score_cache: tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None] | None = None
        self._subnets: list[dict[str, Any]] = []  # the current reduction's scored sub-networks
        with isolated_rng(self.device):
            seed_everything(cfg.seed)
            # The network layout (cifar or imagenet, bnas.networks) picks the super-network and the
            # augmentation family of the loaders.
            self.layout = NETWORKS.get(cfg.network_layout())
            self.train_loader, self.val_loader, self.info = search_loaders(
                cfg.data,
                sc.batch_size,
                cfg.seed,
                self.device,
                self.fast.placement,
                transforms=self.layout.transforms,
            )
            # Resident memory once the data is loaded: the search's own memory is what the peak adds.
            self.rss_after_data_mib = rss_mib("VmRSS")
            self.spec = BinarySpec.from_config(cfg.binarization)
            self.state = (
                self._new_state(None)
                if ckpt is None
                else SearchState.from_checkpoint(ckpt, self._new_state, str(self.out_dir), self.total_epochs)
            )
        self.resumed = ckpt is not None
        self.timer.add(self.state.phase_times_s)
        if self.resumed:
            self.log(
                f"resumed from {self.folder.checkpoint_path}: stage {self.state.stage + 1}, "
                f"epoch {self.state.global_epoch}/{self.total_epochs}"
            )

    # ------------------------------------------------------------------ building blocks
    def _new_state(self, edge_ops: dict[str, list[list[str]]] | None) -> SearchState:
        """A fresh super-network (initialised from the seed) with its optimizers and strategy."""
        cfg, sc = self.cfg, self.cfg.search
        torch.manual_seed(cfg.seed)  # the initial weights and alpha/beta depend on the seed alone
        net = self.layout.search_network(
            sc.init_channels,
            self.info.num_classes,
            sc.layers,
            sc.candidate_ops(),
            sc.sampling_k,
            self.spec,
            steps=sc.nodes,
            multiplier=sc.nodes,
            stem_multiplier=sc.stem_multiplier,
            in_channels=self.info.in_channels,
            edge_ops=edge_ops,
        ).to(self.device)
        net.batch_edges = cfg.runtime.batch_edges
        self.fast.prepare(net)
        w_opt = torch.optim.SGD(
            net.weight_parameters(), lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            w_opt, T_max=self.total_epochs, eta_min=sc.lr_min
        )
        architect = Architect.from_config(net, cfg, forward=lambda x: self.fast(net, x))
        return SearchState(net, w_opt, schedule, architect, make_strategy(cfg.reduction))

    def _weight_step(
        self, x: torch.Tensor, y: torch.Tensor, selection: Selection | None
    ) -> tuple[float, float]:
        net, opt = self.state.net, self.state.weight_optimizer
        reset_projection_terms(net)
        logits = self.fast(net, x, selection)
        loss = F.cross_entropy(logits, y)
        total = loss
        if self.spec.method == "pcnn":
            total = loss + projection_loss(net, self.spec.pcnn_lambda, self.spec.pcnn_eta).to(loss.device)
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(net.weight_parameters(), self.cfg.search.grad_clip)
        opt.step()
        # alpha/beta also received gradients through this pass; they are not the weight
        # optimizer's, so drop them rather than let them leak into the next architecture step.
        for p in net.arch_parameters():
            p.grad = None
        return loss.item(), accuracy(logits.detach(), y)[0]

    @torch.no_grad()
    def evaluate(self, selection: Selection | None = None, cap: int | None = None) -> tuple[float, float]:
        """(loss, accuracy) on the first ``cap`` (all when None) validation batches, always the same
        ones (the loader is reseeded from the run seed alone), with batch statistics (batch_statistics)."""
        net = self.state.net
        loss_m, acc_m = AverageMeter(), AverageMeter()
        _reseed(self.val_loader, derive_seed(self.cfg.seed, _EVAL))
        with batch_statistics(net):
            # Every use of the validation loader reseeds it first: the batch past the cap is not needed.
            for x, y in timed_batches(self.val_loader, self.timer, self.device, cap, fetch_past_cap=False):
                logits = self.fast(net, x, selection)
                loss_m.update(F.cross_entropy(logits, y).item(), len(y))
                acc_m.update(accuracy(logits, y)[0], len(y))
        if not net.training:  # the search trains between evaluations (the net is in train mode)
            net.train()
        return loss_m.avg, acc_m.avg

    # ------------------------------------------------------------------ one super-network epoch
    def _train_epoch(self) -> dict[str, Any]:
        st, sc, seed, timer = self.state, self.cfg.search, self.cfg.seed, self.timer
        ep = st.global_epoch
        torch.manual_seed(derive_seed(seed, _EPOCH_TORCH, ep))
        _reseed(self.train_loader, derive_seed(seed, _EPOCH_TRAIN, ep))
        _reseed(self.val_loader, derive_seed(seed, _EPOCH_VAL, ep))
        lr = st.weight_optimizer.param_groups[0]["lr"]
        warmup = st.architect.frozen(st.stage, st.epoch_in_stage)
        st.net.train()
        loss_m, acc_m = AverageMeter(), AverageMeter()
        val_batches = timed_batches(_cycle(self.val_loader), timer, self.device)
        t0 = time.perf_counter()
        # The train loader is reseeded before every epoch: the batch past the cap is not needed.
        train_batches = timed_batches(
            self.train_loader, timer, self.device, sc.max_batches_per_epoch, fetch_past_cap=False
        )
        for x, y in train_batches:
            if not warmup:  # no validation batch is drawn in the warm-up
                xv, yv = next(val_batches)
                with timer("arch_step"):
                    st.architect.step(xv, yv)
            with timer("weight_step"):
                loss, acc = self._weight_step(x, y, None)
            loss_m.update(loss, len(y))
            acc_m.update(acc, len(y))
        val: dict[str, float] = {}
        if self.validates(ep):
            with timer("validation"):
                cap = sc.val_max_batches if sc.val_max_batches is not None else sc.max_batches_per_epoch
                val["val_loss"], val["val_acc"] = self.evaluate(cap=cap)
        st.lr_schedule.step()
        return {
            "stage": st.stage + 1,
            "epoch": ep + 1,
            "total_epochs": self.total_epochs,
            "train_loss": loss_m.avg,
            "train_acc": acc_m.avg,
            **val,
            "ops_per_edge": st.net.ops_per_edge(),
            "lr": lr,
            "warmup": warmup,
            "epoch_time_s": time.perf_counter() - t0,
        }

    def _collapsed(self, m: dict[str, Any]) -> bool:
        """DARTS+'s early stop (``search.collapse_stop``): the epoch just trained (not a warm-up one)
        left an argmax normal cell at or above the parameter-free share; writes that share into ``m``."""
        stop = self.cfg.search.collapse_stop
        if stop is None or m["warmup"]:
            return False
        m["param_free_normal"] = param_free_share(derive_genotype(self.state.net).genotype.normal)
        return m["param_free_normal"] >= stop

    def validates(self, epoch: int) -> bool:
        """Whether 0-based global ``epoch`` ends with the super-network's validation: every
        ``search.validate_every``-th epoch and the last one. Validation draws from no stream the rest
        of the search uses (every epoch reseeds its own), so skipping it changes only the metrics:
        an epoch without it has no ``val_loss``/``val_acc`` (absent, never stale)."""
        return (epoch + 1) % self.cfg.search.validate_every == 0 or epoch + 1 == self.total_epochs

    def _reduce(self) -> list[dict]:
        """One reduction step: the strategy picks one op per edge to drop; the optimizer forgets them.

        The weight optimizer's learning rate is already the next epoch's (the schedule stepped after
        the last epoch), which is what the sampled sub-networks train with.
        """
        st, seed = self.state, self.cfg.seed
        torch.manual_seed(derive_seed(seed, _REDUCE_TORCH, st.stage))
        if st.strategy.samples:
            _reseed(self._subnet_loader(), derive_seed(seed, _REDUCE_SUBNET, st.stage))
        probs = self._op_probs()
        self._subnets = []
        ctx = ReductionContext(
            edge_ops={t: [list(e) for e in st.net.edge_ops[t]] for t in CELL_TYPES},
            probs=probs,
            evaluate=self._evaluate_subnets,
            rng=random.Random(derive_seed(seed, _REDUCE_RNG, st.stage)),
            log=self.log,
        )
        records = []
        for d in st.strategy.choose_drops(ctx):
            st.net.remove_op(d.cell_type, d.edge, d.op)
            rec = d.to_dict()
            rec.update(
                stage=st.stage + 1,
                alpha_prob=dict(
                    zip(ctx.edge_ops[d.cell_type][d.edge], probs[d.cell_type][d.edge], strict=True)
                ),
                left=list(st.net.edge_ops[d.cell_type][d.edge]),
            )
            records.append(rec)
        prune_optimizer(st.weight_optimizer, st.net.weight_parameters())
        self.fast.forget(st.net)  # the graph lost operations: compile it again
        return records

    # ------------------------------------------------------------------ the whole search
    def _elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._t_start)

    def _save(self, metrics: bool, checkpoint: bool = True) -> None:
        """The checkpoint (unless ``checkpoint`` is False) and, after an epoch, metrics.jsonl
        rewritten from the state."""
        st = self.state
        with self.timer("checkpoint"):
            st.elapsed_s, st.phase_times_s = self._elapsed(), self.timer.snapshot()
            state = st.to_checkpoint() if checkpoint else None
            if metrics:
                self.folder.end_epoch(state, st.metrics)
            elif state is not None:
                self.folder.save_checkpoint(state)

    def run(self, on_epoch: Callable[[dict], None] | None = None) -> SearchResult:
        """Run the remaining epochs and reductions and derive the genotype; see the module docstring.

        ``on_epoch(metrics)`` runs after each epoch's metrics line (and checkpoint, on the epochs that
        write one: ``search.checkpoint_every``) is on disk.
        """
        with isolated_rng(self.device), self.fast.session():
            seed_everything(self.cfg.seed)
            return self._run(on_epoch)

    def _run(self, on_epoch: Callable[[dict], None] | None) -> SearchResult:
        cfg, rc, st = self.cfg, self.cfg.reduction, self.state
        self._t_start, self._elapsed_before = time.perf_counter(), st.elapsed_s
        self.log(
            f"search: {cfg.binarization.method}, K={cfg.search.sampling_k}, strategy={rc.strategy}, "
            f"{self.n_stages} stages x {rc.epochs_per_stage} epochs, "
            f"{len(cfg.search.candidate_ops())} ops/edge, "
            f"{self.layout.name} network, device {self.device}, out {self.out_dir}"
        )
        if is_class_folder(cfg.data.dataset):  # the user's own images
            self.log(describe_classes(cfg.data))
        progress = Progress(self.total_epochs, label="epoch", done=st.global_epoch)
        while st.stage < self.n_stages:
            t_stage, phases_before, stage_train_s = time.perf_counter(), self.timer.snapshot(), 0.0
            stopped_at: int | None = None
            while st.epoch_in_stage < rc.epochs_per_stage:
                m = self._train_epoch()
                stage_train_s += m["epoch_time_s"]
                st.global_epoch += 1
                st.epoch_in_stage += 1
                m["elapsed_s"] = self._elapsed()
                st.metrics.append(m)
                # Every `checkpoint_every` epochs; a reduction always ends with one (below).
                self._save(metrics=True, checkpoint=st.global_epoch % cfg.search.checkpoint_every == 0)
                progress.update(st.global_epoch)
                val_acc = f"{m['val_acc']:.3f}" if "val_acc" in m else "-"
                self.log(
                    progress.line(
                        f"stage {st.stage + 1}/{self.n_stages} | train loss {m['train_loss']:.3f} "
                        f"acc {m['train_acc']:.3f} | val acc {val_acc} | "
                        f"ops/edge {m['ops_per_edge']:.2f}{' (warm-up)' if m['warmup'] else ''}"
                    )
                )
                if on_epoch is not None:
                    on_epoch(dict(m))
                if self._collapsed(m):
                    stopped_at = st.epoch_in_stage
                    self.log(
                        f"stage {st.stage + 1}: the argmax normal cell is {m['param_free_normal']:.0%} "
                        f"parameter-free (search.collapse_stop={cfg.search.collapse_stop}): the stage's "
                        f"remaining {rc.epochs_per_stage - st.epoch_in_stage} epoch(s) are skipped"
                    )
                    st.epoch_in_stage = rc.epochs_per_stage
            t_red = time.perf_counter()
            probs = self._op_probs()
            self._subnets = []
            records = self._reduce() if st.strategy.reduces else []
            reduce_s = time.perf_counter() - t_red
            st.history.extend(records)
            diagnostics = self.stage_diagnostics(records, probs, self._subnets)
            st.stages.append(
                {
                    "stage": st.stage + 1,
                    "diagnostics": diagnostics,
                    "subnets": self._subnets,
                    "collapse_stop": stopped_at,
                    "train_s": stage_train_s,
                    "reduce_s": reduce_s,
                    "wall_s": time.perf_counter() - t_stage,
                    "ops_per_edge_after": st.net.ops_per_edge(),
                    "peak_rss_mib": rss_mib("VmHWM"),
                    "peak_cuda_mib": (
                        torch.cuda.max_memory_allocated(self.device) / 2**20
                        if self.device.type == "cuda"
                        else None
                    ),
                    "phases": self.timer.since(phases_before),
                }
            )
            if records:
                self.log(
                    f"stage {st.stage + 1}: removed {len(records)} ops in {reduce_s:.1f}s; "
                    f"{st.net.ops_per_edge():.2f} ops/edge left"
                )
            st.stage += 1
            st.epoch_in_stage = 0
            self._save(metrics=False)
        return self._finish()

    def _finish(self) -> SearchResult:
        st, sc = self.state, self.cfg.search
        with self.timer("derive"):
            derivation = derive_genotype(st.net, sc.max_param_free)
            genotype, choice = derivation.genotype, derivation.selection
            _, derived_acc = self.evaluate(choice, cap=sc.max_batches_per_epoch)
            proxy_acc = self._proxy(choice)
        degenerate = degenerate_cells(genotype, sc.degenerate_share)
        elapsed = self._elapsed()
        final = {
            "derived_val_acc": derived_acc,
            "proxy_val_acc": proxy_acc,
            "supernet_val_acc": st.metrics[-1].get("val_acc", float("nan")) if st.metrics else float("nan"),
            "search_time_s": elapsed,
            "epochs": st.global_epoch,
            "stages": len(st.stages),
            "genotype_digest": genotype.digest,
            "param_free_normal": param_free_share(genotype.normal),
            "param_free_reduce": param_free_share(genotype.reduce),
            "degenerate_cells": degenerate,
            "param_free_capped": derivation.capped,
            "peak_rss_mib": rss_mib("VmHWM"),
            "peak_rss_after_data_mib": self.rss_after_data_mib,
            "device": str(self.device),
            "fast_path": self.fast.describe(self.train_loader),
            "resumed": self.resumed,
            "phase_times_s": self.timer.snapshot(),
        }
        with self.timer("checkpoint"):
            genotype.save(self.out_dir / "genotype.json")
            self.folder.write_json("history.json", st.history)
            self.folder.write_json(
                "diagnostics.json",
                {
                    "stages": [{"stage": r["stage"], **r.get("diagnostics", {})} for r in st.stages],
                    "final": {k: final[k] for k in (*CELL_DIAGNOSTICS, "derived_val_acc", "proxy_val_acc")},
                },
            )
            self.folder.write_final({**final, "stage_times": st.stages})
            self.folder.write_text("genotype.txt", genotype.describe() + "\n")
        self.log(
            f"derived genotype {genotype.digest} (val_acc with shared weights {derived_acc:.4f}, proxy "
            f"{proxy_acc:.4f} after {sc.proxy_steps} steps, search {format_duration(elapsed)}):\n"
            f"{genotype.describe()}"
        )
        if degenerate:
            cells = ", ".join(f"{c} {v:.0%}" for c, v in degenerate.items())
            self.log(
                f"warning: degenerate cell(s): {cells} parameter-free (search.degenerate_share="
                f"{sc.degenerate_share}); the search found no weighted operation worth keeping there"
            )
        return SearchResult(genotype, st.history, st.metrics, final, self.out_dir, st.stages)


def run_search(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = info,
) -> SearchResult:
    """Run (or resume) one BNAS search; see :class:`Search`. Files land in ``out_dir``."""
    return Search(cfg, out_dir, log=log, resume=resume).run(on_epoch)
