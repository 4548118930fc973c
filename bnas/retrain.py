"""Retraining a genotype: the DARTS evaluation protocol with binarized cells (method.md section 8).

One function, :func:`retrain`, trains an :class:`~bnas.eval_network.EvalNetwork` built from
``cfg.retrain`` and ``cfg.binarization``:

* SGD (``lr``, ``momentum``, ``weight_decay``) with a per-epoch cosine schedule from ``lr`` to ``lr_min``
  (``lr_schedule: step``: ``lr * lr_gamma`` after every epoch, DARTS ImageNet);
* loss = CE_s(logits) + ``auxiliary_weight`` * CE_s(aux logits), CE_s the cross-entropy with label
  smoothing ``label_smoothing`` (0 on CIFAR; 0.1 on ImageNet) [+ PCNN's projection loss
  (``binarization.pcnn_lambda``, ``pcnn_eta``) when the method is ``pcnn``];
* gradient norm clipped at ``grad_clip``; drop path ramped linearly, ``drop_path_prob * e / epochs``
  in (0-based) epoch ``e`` (DARTS);
* at most ``max_batches_per_epoch`` batches per epoch when set (CPU-sized runs; evaluation always
  covers the whole, possibly subset, test split).

The network layout (``network``: DARTS' CIFAR or ImageNet network, :mod:`bnas.networks`) picks the
evaluation network and the augmentation family. Reported losses are the main head's cross-entropy only
(no auxiliary or projection term), accuracies are fractions in [0, 1].

The run is a loop of epochs over the run skeleton of :mod:`bnas.training`. Files in ``out_dir``:
``config.json`` (the resolved configuration), ``genotype.json``, ``checkpoint.pt`` (every
``retrain.checkpoint_every`` epochs and after the last, written atomically: model, optimizer,
scheduler, epoch, random states, metrics so far; it belongs to the run with the same result-changing
settings and genotype), ``metrics.jsonl`` (one line per epoch; a run resumed between checkpoints
rewrites it from the checkpoint's metrics and repeats those epochs), and at the end ``final.json``
and ``model.bnas`` (the packed export, :mod:`bnas.export`).

Reproducibility: the data order and augmentation of epoch ``e`` are reseeded from ``(seed, e)``
(:func:`~bnas.training.derive_seed`) and the run's random state (drop path) is saved in the
checkpoint, so on one machine a run resumed from a checkpoint ends with the same weights as an
uninterrupted one. The run draws from the global random generators inside
:func:`~bnas.training.isolated_rng`: the caller's random state is unchanged afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnas.accel import FastPath
from bnas.binarization import BinarySpec, projection_loss
from bnas.config import ConfigError, ExperimentConfig, require_phase
from bnas.data import DatasetInfo, describe_classes, is_class_folder, reseed_loader, retrain_loaders
from bnas.eval_network import EvalNetwork
from bnas.export import export_packed
from bnas.genotype import Genotype
from bnas.logs import info
from bnas.model_size import size_report
from bnas.networks import NETWORKS, build_eval_network
from bnas.runtime import (
    AverageMeter,
    Progress,
    accuracy,
    format_duration,
    get_rng_state,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from bnas.training import (
    UNLOADABLE,
    PhaseTimer,
    RunFolder,
    checked_count,
    derive_seed,
    isolated_rng,
    timed_batches,
    unloadable,
)

GENOTYPE = "genotype.json"
PACKED = "model.bnas"
#: Seed streams of :func:`~bnas.training.derive_seed`: a retraining epoch's data order, its augmentation.
_ORDER, _AUGMENT = 10, 11
#: A batch progress line at most this often within an epoch (long CPU epochs).
BATCH_LOG_INTERVAL_S = 60.0
#: The timed phases of a retraining (``final.json["phase_times_s"]``), as the search's
#: (:data:`bnas.search.PHASES`): batch loading and transfer, the training steps, the test pass, the
#: checkpoint and metrics writes, the packed export.
PHASES = ("data", "train_step", "evaluation", "checkpoint", "export")

Log = Callable[[str], None] | None


def build_network(cfg: ExperimentConfig, genotype: Genotype, info: DatasetInfo) -> EvalNetwork:
    """The evaluation network of ``cfg.retrain`` for ``genotype`` and the dataset described by ``info``
    (the layout of ``cfg.network``: :class:`EvalNetwork` or
    :class:`~bnas.eval_network.EvalNetworkImageNet`, which has the same interface)."""
    r = cfg.retrain
    return build_eval_network(
        cfg.network_layout(),
        genotype,
        C=r.init_channels,
        num_classes=info.num_classes,
        layers=r.layers,
        auxiliary=r.auxiliary,
        spec=BinarySpec.from_config(cfg.binarization),
        in_channels=info.in_channels,
        bn_eps=r.bn_eps,
    )


def _identity(cfg: ExperimentConfig, genotype: Genotype) -> dict[str, Any]:
    """The checkpoint identity: the result-changing settings and the genotype."""
    return {**cfg.result_identity(), "genotype_digest": genotype.digest}


def _reseed_data(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """Make epoch ``epoch``'s shuffle and augmentation a function of ``(seed, epoch)`` only."""
    reseed_loader(loader, derive_seed(seed, _ORDER, epoch), derive_seed(seed, _AUGMENT, epoch))


def train_epoch(
    model: EvalNetwork,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: ExperimentConfig,
    device: torch.device,
    max_batches: int | None = None,
    log: Log = None,
    label: str = "",
    fast: FastPath | None = None,
    timer: PhaseTimer | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_batches`` batches); returns train_loss and train_acc.

    ``fast`` runs the forward passes (bf16, channels_last, compile: :mod:`bnas.accel`); None: plain.
    ``timer`` charges batch loading to ``data`` and the steps to ``train_step``.
    """
    b = cfg.binarization
    fast = fast or FastPath.off(device)
    timer = timer or PhaseTimer(device)
    use_projection = b.method == "pcnn" and b.pcnn_lambda > 0
    model.train()
    loss_m, acc_m = AverageMeter(), AverageMeter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    progress = Progress(n_batches, label=f"{label} batch".strip())
    last_log = time.perf_counter()
    for step, (x, y) in enumerate(timed_batches(loader, timer, device, n_batches)):
        with timer("train_step"):
            loss, logits = _train_step(model, x, y, optimizer, cfg, fast, use_projection)
        loss_m.update(loss, y.size(0))
        acc_m.update(accuracy(logits, y)[0], y.size(0))
        progress.update(step + 1)
        if log is not None and time.perf_counter() - last_log > BATCH_LOG_INTERVAL_S:
            last_log = time.perf_counter()
            log(progress.line(f"loss {loss_m.avg:.4f} acc {acc_m.avg:.3f}"))
    return {"train_loss": loss_m.avg, "train_acc": acc_m.avg}


def _train_step(
    model: EvalNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: ExperimentConfig,
    fast: FastPath,
    use_projection: bool,
) -> tuple[float, torch.Tensor]:
    """One SGD step; the plain cross-entropy and the (detached) logits."""
    r, b = cfg.retrain, cfg.binarization
    optimizer.zero_grad(set_to_none=True)
    logits, aux = fast(model, x)
    loss = F.cross_entropy(logits, y)
    smooth = r.label_smoothing
    # The objective smooths the labels; the reported loss stays the plain cross-entropy.
    total = F.cross_entropy(logits, y, label_smoothing=smooth) if smooth > 0 else loss
    if aux is not None:
        total = total + r.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=smooth)
    if use_projection:
        total = total + projection_loss(model, b.pcnn_lambda, b.pcnn_eta)
    total.backward()
    if r.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
    optimizer.step()
    return loss.item(), logits.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    fast: FastPath | None = None,
    timer: PhaseTimer | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (fraction) of ``model`` in eval mode over ``loader``."""
    fast = fast or FastPath.off(device)
    timer = timer or PhaseTimer(device)
    model.eval()
    loss_m, acc_m = AverageMeter(), AverageMeter()
    for x, y in timed_batches(loader, timer, device):
        with timer("evaluation"):
            logits, _ = fast(model, x)
            loss_m.update(F.cross_entropy(logits, y).item(), y.size(0))
            acc_m.update(accuracy(logits, y)[0], y.size(0))
    return {"loss": loss_m.avg, "acc": acc_m.avg}


def retrain(
    cfg: ExperimentConfig,
    genotype: Genotype,
    out_dir: str | Path,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    log: Log = info,
) -> dict[str, Any]:
    """Train ``genotype``'s evaluation network per ``cfg``; return the final metrics and size report.

    ``on_epoch(metrics)`` runs after each epoch's files are on disk (its checkpoint too, on the
    ``retrain.checkpoint_every`` cadence), with ``epoch`` (1-based),
    ``epochs``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``lr``, ``drop_path_prob``
    and ``elapsed_s`` (training time so far, resumed sessions included). With ``resume`` an existing
    ``out_dir/checkpoint.pt`` of the same run is continued (a checkpoint of another run, or one that is
    not plain data, raises :class:`~bnas.errors.ConfigError` before any work); without it, or without a
    checkpoint, earlier results in ``out_dir`` are removed.
    ``log`` receives progress lines (default: the ``bnas`` logger, :mod:`bnas.logs`; None: silent).

    Returns ``test_acc``, ``test_loss``, ``train_acc``, ``train_loss``, ``epochs``, ``wall_time_s``,
    ``genotype_digest``, ``config_digest``, ``method``, ``seed``, ``device`` and the keys of
    :func:`~bnas.model_size.size_report`; the same dict is written to ``out_dir/final.json``.
    """
    say = log or (lambda _msg: None)
    require_phase(cfg, "retrain")  # a split smaller than one batch: refused before any folder exists
    device = resolve_device(cfg.device)
    folder = RunFolder(out_dir, _identity(cfg, genotype), (GENOTYPE, PACKED))
    ckpt = folder.open(resume, cfg.to_dict())  # a checkpoint of another run is refused here, before any work
    if ckpt is None:
        genotype.save(folder.path / GENOTYPE)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    fast = FastPath.from_config(cfg.runtime, device)  # bf16, channels_last, ... (bnas.accel)
    with isolated_rng(device), fast.session():
        return _retrain(cfg, genotype, folder, ckpt, device, on_epoch, say, fast)


def _retrain(
    cfg: ExperimentConfig,
    genotype: Genotype,
    folder: RunFolder,
    ckpt: dict[str, Any] | None,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    say: Callable[[str], None],
    fast: FastPath,
) -> dict[str, Any]:
    r, out = cfg.retrain, folder.path
    seed_everything(cfg.seed)
    layout = NETWORKS.get(cfg.network_layout())
    if is_class_folder(cfg.data.dataset):
        say(describe_classes(cfg.data))
    train_loader, test_loader, info = retrain_loaders(
        cfg.data,
        r.batch_size,
        r.eval_batch_size,
        cfg.seed,
        cutout=r.cutout,
        autoaugment=r.autoaugment,
        device=device,
        placement=fast.placement,
        transforms=layout.transforms,
    )
    model = fast.prepare(build_network(cfg, genotype, info).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if r.lr_schedule == "step":  # DARTS ImageNet: StepLR(step_size=1, gamma=0.97)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=r.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=r.epochs, eta_min=r.lr_min)

    start_epoch, history, elapsed_before = 0, [], 0.0
    timer = PhaseTimer(device, PHASES)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"], device)
            start_epoch = checked_count("epoch", ckpt["epoch"], r.epochs)
            history, elapsed_before = list(ckpt["metrics"]), ckpt["elapsed_s"]
            timer.add(ckpt.get("phase_times_s", {}))  # a resumed run reports the whole run's phases
        except UNLOADABLE as e:
            raise ConfigError(unloadable(e), source=str(folder.path)) from None
        say(f"resuming from {folder.checkpoint_path} after epoch {start_epoch}/{r.epochs}")

    n_train = len(train_loader.dataset)
    say(
        f"retrain {genotype.digest} ({cfg.binarization.method}, {cfg.binarization.activations} activations): "
        f"{layout.name} network, {r.layers} cells, C={r.init_channels}, {info.name} {info.image_size}px, "
        f"{n_train} train / "
        f"{len(test_loader.dataset)} test images, {r.epochs} epochs, device {device}, out {out}"
    )
    progress = Progress(r.epochs, label="epoch", done=start_epoch)
    session_t0 = time.perf_counter()
    for epoch in range(start_epoch, r.epochs):
        lr = optimizer.param_groups[0]["lr"]
        model.drop_path_prob = r.drop_path_prob * epoch / r.epochs
        _reseed_data(train_loader, cfg.seed, epoch)
        train = train_epoch(
            model,
            train_loader,
            optimizer,
            cfg,
            device,
            r.max_batches_per_epoch,
            say,
            label=f"epoch {epoch + 1}/{r.epochs}",
            fast=fast,
            timer=timer,
        )
        test = evaluate(model, test_loader, device, fast, timer)
        scheduler.step()
        metrics = {
            "epoch": epoch + 1,
            "epochs": r.epochs,
            **train,
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "lr": lr,
            "drop_path_prob": model.drop_path_prob,
            "elapsed_s": elapsed_before + time.perf_counter() - session_t0,
        }
        history.append(metrics)
        checkpoint = (epoch + 1) % r.checkpoint_every == 0 or epoch + 1 == r.epochs
        with timer("checkpoint"):
            folder.end_epoch(
                None
                if not checkpoint
                else {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": get_rng_state(device),
                    "metrics": history,
                    "elapsed_s": metrics["elapsed_s"],
                    "phase_times_s": timer.snapshot(),
                },
                history,
            )
        progress.update(epoch + 1)
        say(
            progress.line(
                f"train loss {train['train_loss']:.4f} acc {train['train_acc']:.3f} | "
                f"test loss {test['loss']:.4f} acc {test['acc']:.3f} | lr {lr:.2e}"
            )
        )
        if on_epoch is not None:
            on_epoch(dict(metrics))

    last = history[-1]
    size = size_report(model)
    with timer("export"):
        export_packed(model, out / PACKED)
    final = {
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "train_acc": last["train_acc"],
        "train_loss": last["train_loss"],
        "epochs": r.epochs,
        "wall_time_s": last["elapsed_s"],
        "genotype_digest": genotype.digest,
        "config_digest": cfg.result_digest(),
        "method": cfg.binarization.method,
        "activations": cfg.binarization.activations,
        "seed": cfg.seed,
        "device": str(device),
        "fast_path": fast.describe(train_loader),
        "phase_times_s": timer.snapshot(),
        "dataset": info.name,
        **size,
    }
    folder.write_final(final)
    say(
        f"done: test acc {final['test_acc']:.3f} after {r.epochs} epochs "
        f"in {format_duration(final['wall_time_s'])}; "
        f"{size['params']:,} params ({size['binary_params']:,} binary), packed {size['packed_bytes']:,} B "
        f"vs fp32 {size['fp32_bytes']:,} B -> {out / PACKED}"
    )
    return final
