"""Scoring discrete networks with the super-network's shared weights: the sampled sub-networks of a
reduction, and the proxy of the derived genotype (docs/method.md sections 6 and 7).

:class:`SharedWeightScoring` is the part of :class:`bnas.search.Search` that measures; the search
owns the loop, this module how a measurement is taken:

* every sub-network of a stage is scored on the same validation batches (the loader reseeded from the
  run seed alone, drawn once per stage and kept: :data:`SCORE_CACHE_BYTES`), with per-batch BN
  statistics (:func:`batch_statistics`), as accuracy and cross-entropy (:class:`SubnetScore`);
* with ``reduction.subnet_epochs`` > 0 a sub-network first trains V epochs with the super-network's
  optimizer; ``reduction.subnet_weights: snapshot`` restores weights, BN buffers and optimizer state
  after each one (its score does not depend on its position);
* without training, ``runtime.subnet_batch`` sub-networks are scored in one stacked pass
  (:class:`~bnas.supernet.SelectionBatch`; on the CPU bit for bit the one-at-a-time figures);
* the proxy (``search.proxy_steps``): the derived network fine-tuned a few steps from the shared
  weights, then scored, the weights restored: the same figure for every strategy.

The host (``Search``) provides ``cfg``, ``state``, ``timer``, ``device``, ``fast``, ``layout``,
``spec``, ``train_loader``, ``val_loader``, ``sub_loader``, ``_score_cache``, ``_subnets``,
``_weight_step`` and ``evaluate``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnas.binarization import projection_loss, reset_projection_terms
from bnas.data import reseed_loader, search_train_loader
from bnas.derivation import derive_genotype
from bnas.diagnostics import (
    binomial_se,
    mean_normalized_entropy,
    order_correlation,
    param_free_share,
    signal_to_noise,
)
from bnas.supernet import CELL_TYPES, Selection, SelectionBatch
from bnas.training import derive_seed, timed_batches

#: Seed streams of :func:`~bnas.training.derive_seed` (the first part after the base seed) that the
#: scoring draws from; :mod:`bnas.search` owns the others (1-4, 6), all distinct.
_REDUCE_SUBNET, _PROXY_TORCH, _PROXY_TRAIN, _EVAL = 5, 7, 8, 99
#: The validation batches that score the sub-networks of a stage are kept in memory up to this size;
#: beyond it they are drawn again for every sub-network (the same batches: the loader is reseeded).
SCORE_CACHE_BYTES = 1 << 30


@dataclass
class SubnetScore:
    """One sub-network measured on the stage's validation batches: accuracy, mean cross-entropy and
    its per-image standard deviation, over ``n`` images."""

    acc: float
    loss: float
    loss_sd: float
    n: int

    def value(self, kind: str) -> float:
        """What ranks the sub-networks (higher is better): the accuracy, or minus the loss."""
        return self.acc if kind == "accuracy" else -self.loss

    def se(self, kind: str) -> float:
        """Standard error of :meth:`value` from the finite validation sample."""
        return binomial_se(self.acc, self.n) if kind == "accuracy" else self.loss_sd / math.sqrt(self.n)


def _reseed(loader: torch.utils.data.DataLoader, seed: int) -> None:
    """Order from ``seed``, augmentation from ``seed + 2`` (see :func:`bnas.data.reseed_loader`)."""
    reseed_loader(loader, seed, seed + 2)


def _cycle(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


@contextlib.contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Evaluate with per-batch BN statistics, leaving the running statistics untouched [D].

    During search the running statistics mix every candidate operation and every sampled
    sub-network, so they describe no single architecture; batch statistics do (a common one-shot
    NAS practice). Momentum 0 keeps ``running = (1 - 0) * running``. Every module is in eval mode
    but the BNs; on leaving, every module gets its mode back.

    The flags are set directly, as ``net.eval()`` and ``bn.train()`` would leave them (no module of the
    super-network overrides ``train()``): on a CPU-sized super-network of thousands of modules, the
    recursive calls and ``Module.__setattr__`` cost more than a small validation pass.
    """
    modules = list(net.modules())
    bns = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes, momenta = [m.training for m in modules], [m.momentum for m in bns]
    for m in modules:
        object.__setattr__(m, "training", False)
    for m in bns:
        object.__setattr__(m, "training", True)
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            object.__setattr__(m, "training", mode)
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom


class SharedWeightScoring:
    """Sub-network scores, the stage's decision diagnostics and the proxy (module docstring)."""

    def _subnet_loader(self) -> torch.utils.data.DataLoader:
        """The sampled sub-networks' train loader (their own batch size), made on first use."""
        if self.sub_loader is None:
            with self.timer("data"):
                self.sub_loader = search_train_loader(
                    self.cfg.data,
                    self.cfg.reduction.subnet_batch_size,
                    self.cfg.seed,
                    self.device,
                    self.fast.placement,
                    transforms=self.layout.transforms,
                )
        return self.sub_loader

    def _score_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation batches that score this stage's sub-networks: the first
        ``reduction.subnet_eval_batches`` (else ``search.max_batches_per_epoch``, else all) of the
        validation loader reseeded from the run seed alone, so every sub-network of every stage sees the
        same images with the same augmentation. Drawn once per stage and kept (up to
        :data:`SCORE_CACHE_BYTES`; beyond that drawn again, identically, for every sub-network)."""
        rc, sc, stage = self.cfg.reduction, self.cfg.search, self.state.stage
        cap = rc.subnet_eval_batches if rc.subnet_eval_batches is not None else sc.max_batches_per_epoch
        if self._score_cache is None or self._score_cache[0] != stage:
            _reseed(self.val_loader, derive_seed(self.cfg.seed, _EVAL))
            kept: list[tuple[torch.Tensor, torch.Tensor]] | None = []
            size = 0
            for x, y in timed_batches(self.val_loader, self.timer, self.device, cap, fetch_past_cap=False):
                size += x.element_size() * x.nelement()
                if size > SCORE_CACHE_BYTES:
                    kept = None
                    break
                kept.append((x, y))
            self._score_cache = (stage, kept)
        kept = self._score_cache[1]
        if kept is not None:
            yield from kept
            return
        _reseed(self.val_loader, derive_seed(self.cfg.seed, _EVAL))
        yield from timed_batches(self.val_loader, self.timer, self.device, cap, fetch_past_cap=False)

    @torch.no_grad()
    def _score(self, selection: Selection | SelectionBatch) -> SubnetScore | list[SubnetScore]:
        """Accuracy and cross-entropy of one sub-network on :meth:`_score_batches`, with batch statistics;
        for a :class:`SelectionBatch`, of each of its sub-networks, all in one pass per batch (the same
        figures as one at a time: each group's BN statistics are its own)."""
        net = self.state.net
        groups = len(selection) if isinstance(selection, SelectionBatch) else 1
        sums = [[0.0, 0.0, 0.0, 0] for _ in range(groups)]  # correct, loss, loss^2, images
        with batch_statistics(net):
            for x, y in self._score_batches():
                logits = self.fast(net, x, selection).float()
                b = len(y)
                for g, acc in enumerate(sums):
                    lg = logits[g * b : (g + 1) * b]
                    losses = F.cross_entropy(lg, y, reduction="none")
                    acc[0] += (lg.argmax(1) == y).sum().item()
                    acc[1] += losses.sum().item()
                    acc[2] += (losses * losses).sum().item()
                    acc[3] += b
        out = []
        for correct, loss_sum, loss_sq, n in sums:
            mean = loss_sum / n
            sd = math.sqrt(max(loss_sq / n - mean * mean, 0.0) * n / max(n - 1, 1))
            out.append(SubnetScore(correct / n, mean, sd, n))
        return out if isinstance(selection, SelectionBatch) else out[0]

    def _subnet_batch(self) -> int:
        """How many sub-networks one scoring pass stacks (``runtime.subnet_batch``; see there)."""
        v = self.cfg.runtime.subnet_batch
        if v == "auto":
            return 1_000_000 if self.device.type == "cuda" else 1
        return int(v)

    def _snapshot(self) -> dict[str, Any]:
        """The weights, buffers (BN statistics) and weight-optimizer state, to restore after a sub-network."""
        net, opt = self.state.net, self.state.weight_optimizer
        params = net.weight_parameters()
        return {
            "params": [p.detach().clone() for p in params],
            "buffers": [b.detach().clone() for b in net.buffers()],
            "opt": [
                {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state.get(p, {}).items()}
                for p in params
            ],
        }

    @torch.no_grad()
    def _restore(self, snap: dict[str, Any]) -> None:
        net, opt = self.state.net, self.state.weight_optimizer
        params = net.weight_parameters()
        for p, v in zip(params, snap["params"], strict=True):
            p.copy_(v)
            p.grad = None
        for b, v in zip(net.buffers(), snap["buffers"], strict=True):
            b.copy_(v)
        for p, st in zip(params, snap["opt"], strict=True):
            if st:
                opt.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
            else:
                opt.state.pop(p, None)

    def _train_subnet(self, selection: Selection) -> None:
        """V epochs of weight steps on the sub-network (the super-network's optimizer and lr)."""
        rc = self.cfg.reduction
        sub_loader = self._subnet_loader()
        if rc.subnet_weights == "snapshot":  # every sub-network sees the same batches
            _reseed(sub_loader, derive_seed(self.cfg.seed, _REDUCE_SUBNET, self.state.stage))
        with self.timer("subnet_train"):
            if not self.state.net.training:  # evaluate() leaves it training
                self.state.net.train()
            for _ in range(rc.subnet_epochs):
                for x, y in timed_batches(sub_loader, self.timer, self.device, rc.subnet_max_batches):
                    self._weight_step(x, y, selection)

    def _evaluate_subnets(self, selections: list[Selection]) -> list[float]:
        """Train (``reduction.subnet_epochs`` > 0) and score each sub-network, in order; records every
        score for the stage's diagnostics. With ``subnet_weights: snapshot`` each starts from the same
        weights, BN statistics and optimizer state, restored afterwards."""
        rc = self.cfg.reduction
        if not rc.subnet_epochs and self._subnet_batch() > 1:  # forward passes only: stack them
            scores: list[SubnetScore] = []
            step = self._subnet_batch()
            with self.timer("subnet_eval"):
                for i in range(0, len(selections), step):
                    chunk = selections[i : i + step]
                    got = self._score(SelectionBatch(chunk)) if len(chunk) > 1 else [self._score(chunk[0])]
                    scores += got  # type: ignore[arg-type]
            return [self._record(s, sel) for s, sel in zip(scores, selections, strict=True)]
        out = []
        snap = self._snapshot() if rc.subnet_epochs and rc.subnet_weights == "snapshot" else None
        for sel in selections:
            if rc.subnet_epochs:
                self._train_subnet(sel)
            with self.timer("subnet_eval"):
                score = self._score(sel)
            if snap is not None:
                with self.timer("subnet_train"):
                    self._restore(snap)
            out.append(self._record(score, sel))  # type: ignore[arg-type]
        return out

    def _record(self, score: SubnetScore, selection: Selection) -> float:
        """Keep one sub-network's score (and its ops) for the stage's diagnostics; return what the
        strategy ranks by."""
        kind = self.cfg.reduction.subnet_score
        v = score.value(kind)
        self._subnets.append(
            {
                "position": len(self._subnets),
                "score": v,
                "se": score.se(kind),
                "acc": score.acc,
                "loss": score.loss,
                "n": score.n,
                "normal": list(selection.normal),
                "reduce": list(selection.reduce),
            }
        )
        return v

    def _op_probs(self) -> dict[str, list[list[float]]]:
        with torch.no_grad():
            return {t: [p.tolist() for p in self.state.net.op_probabilities(t)] for t in CELL_TYPES}

    def stage_diagnostics(
        self, records: list[dict], probs: dict[str, list[list[float]]], subnets: list[dict]
    ) -> dict[str, Any]:
        """What this stage's decisions rest on (see :mod:`bnas.diagnostics`): the order correlation and
        signal-to-noise of the sub-network scores, the share of drops that were also alpha's lowest op,
        alpha's and beta's normalised entropy before the reduction, and the parameter-free share of the
        current argmax cells after it."""
        net = self.state.net
        scores = [s["score"] for s in subnets]
        rho, p = order_correlation(scores)
        lowest = [
            min(r["alpha_prob"], key=lambda o: (r["alpha_prob"][o], list(r["alpha_prob"]).index(o)))
            == r["op"]
            for r in records
            if r.get("instead_of") is None
        ]
        with torch.no_grad():
            beta_rows = []
            for t in CELL_TYPES:
                w, off = net.betas[t], 0
                for i in range(net.steps):
                    beta_rows.append(F.softmax(w[off : off + 2 + i], dim=-1).tolist())
                    off += 2 + i
        argmax = derive_genotype(net).genotype
        return {
            "subnets": len(subnets),
            "order_rho": rho,
            "order_p": p,
            "score_sd": float(torch.tensor(scores).std().item()) if len(scores) > 1 else math.nan,
            "score_se": sum(s["se"] for s in subnets) / len(subnets) if subnets else math.nan,
            "snr": signal_to_noise(scores, [s["se"] for s in subnets]),
            "removed_lowest_alpha": sum(lowest) / len(lowest) if lowest else math.nan,
            "alpha_entropy_normal": mean_normalized_entropy(probs["normal"]),
            "alpha_entropy_reduce": mean_normalized_entropy(probs["reduce"]),
            "beta_entropy": mean_normalized_entropy(beta_rows),
            "param_free_normal": param_free_share(argmax.normal),
            "param_free_reduce": param_free_share(argmax.reduce),
            "none_spared": sum(r.get("instead_of") is not None for r in records),
        }

    def _proxy(self, selection: Selection) -> float:
        """The proxy of the derived network, computed the same way for every strategy: the discrete
        network fine-tuned ``search.proxy_steps`` SGD steps (the search's lr, momentum and weight decay,
        a fresh optimizer) on train batches from the shared weights, then its validation accuracy with
        batch statistics over the epoch's validation cap. The weights are restored afterwards."""
        sc, st, seed = self.cfg.search, self.state, self.cfg.seed
        if sc.proxy_steps == 0:
            return self.evaluate(selection, cap=sc.max_batches_per_epoch)[1]
        snap = self._snapshot()
        net = st.net
        opt = torch.optim.SGD(
            net.weight_parameters(), lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay
        )
        torch.manual_seed(derive_seed(seed, _PROXY_TORCH))
        _reseed(self.train_loader, derive_seed(seed, _PROXY_TRAIN))
        net.train()
        for i, (x, y) in enumerate(timed_batches(_cycle(self.train_loader), self.timer, self.device)):
            if i >= sc.proxy_steps:
                break
            reset_projection_terms(net)
            logits = self.fast(net, x, selection)
            loss = F.cross_entropy(logits, y)
            if self.spec.method == "pcnn":
                loss = loss + projection_loss(net, self.spec.pcnn_lambda, self.spec.pcnn_eta).to(loss.device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.weight_parameters(), sc.grad_clip)
            opt.step()
            for p in net.arch_parameters():
                p.grad = None
        acc = self.evaluate(selection, cap=sc.max_batches_per_epoch)[1]
        self._restore(snap)
        return acc
