"""Retraining a genotype: the DARTS evaluation protocol with binarized cells (method.md section 8).

One function, :func:`retrain`, trains an :class:`~bnas.eval_network.EvalNetwork` built from
``cfg.retrain`` and ``cfg.binarization``:

* SGD (``lr``, ``momentum``, ``weight_decay``) with a per-epoch cosine schedule from ``lr`` to ``lr_min``;
* loss = CE(logits) + ``auxiliary_weight`` * CE(aux logits) [+ PCNN's projection loss
  (``binarization.pcnn_lambda``, ``pcnn_eta``) when the method is ``pcnn``];
* gradient norm clipped at ``grad_clip``; drop path ramped linearly, ``drop_path_prob * e / epochs``
  in (0-based) epoch ``e`` (DARTS);
* at most ``max_batches_per_epoch`` batches per epoch when set (CPU-sized runs; evaluation always
  covers the whole, possibly subset, test split).

Reported losses are the main head's cross-entropy only (no auxiliary or projection term), accuracies
are fractions in [0, 1].

Files in ``out_dir``: ``config.json`` (the resolved configuration), ``genotype.json``,
``checkpoint.pt`` (after every epoch, written atomically: model, optimizer, scheduler, epoch, random
states, metrics so far), ``metrics.jsonl`` (one line per epoch), and at the end ``final.json`` and
``model.bnas`` (the packed export, :mod:`bnas.export`).

Reproducibility: the data order and augmentation of epoch ``e`` are reseeded from ``(seed, e)`` and
the global random state (drop path) is saved in the checkpoint, so on one machine a run resumed
from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnas.binarization import BinarySpec, projection_loss
from bnas.config import ConfigError, ExperimentConfig
from bnas.data import DatasetInfo, reseed_loader, retrain_loaders
from bnas.eval_network import EvalNetwork
from bnas.export import export_packed
from bnas.genotype import Genotype
from bnas.model_size import size_report
from bnas.runtime import (
    AverageMeter,
    Progress,
    accuracy,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    format_duration,
    get_rng_state,
    resolve_device,
    seed_everything,
    set_rng_state,
)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FINAL = "final.json"
GENOTYPE = "genotype.json"
CONFIG = "config.json"
PACKED = "model.bnas"

#: Settings that may differ between a run and its resumption (where and how, not what, is computed).
_RESUME_FREE_KEYS = ("device", "data.root", "data.download", "data.num_workers")
#: A batch progress line at most this often within an epoch (long CPU epochs).
BATCH_LOG_INTERVAL_S = 60.0

Log = Callable[[str], None] | None


def build_network(cfg: ExperimentConfig, genotype: Genotype, info: DatasetInfo) -> EvalNetwork:
    """The evaluation network of ``cfg.retrain`` for ``genotype`` and the dataset described by ``info``."""
    r = cfg.retrain
    return EvalNetwork(
        genotype,
        C=r.init_channels,
        num_classes=info.num_classes,
        layers=r.layers,
        auxiliary=r.auxiliary,
        spec=BinarySpec.from_config(cfg.binarization),
        in_channels=info.in_channels,
        bn_eps=r.bn_eps,
    )


def _run_identity(cfg: ExperimentConfig, genotype: Genotype) -> dict[str, Any]:
    flat = {k: v for k, v in cfg.flat().items() if k not in _RESUME_FREE_KEYS}
    return {"config": flat, "genotype_digest": genotype.digest}


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 7_919 + 424_242) % 2**63


def _reseed_data(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """Make epoch ``epoch``'s shuffle and augmentation a function of ``(seed, epoch)`` only."""
    s = _epoch_seed(seed, epoch)
    reseed_loader(loader, s, s ^ 0x5EED)


def train_epoch(
    model: EvalNetwork,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: ExperimentConfig,
    device: torch.device,
    max_batches: int | None = None,
    log: Log = None,
    label: str = "",
) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_batches`` batches); returns train_loss and train_acc."""
    r, b = cfg.retrain, cfg.binarization
    use_projection = b.method == "pcnn" and b.pcnn_lambda > 0
    model.train()
    loss_m, acc_m = AverageMeter(), AverageMeter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    progress = Progress(n_batches, label=f"{label} batch".strip())
    last_log = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= n_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits, aux = model(x)
        loss = F.cross_entropy(logits, y)
        total = loss
        if aux is not None:
            total = total + r.auxiliary_weight * F.cross_entropy(aux, y)
        if use_projection:
            total = total + projection_loss(model, b.pcnn_lambda, b.pcnn_eta)
        total.backward()
        if r.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        optimizer.step()
        loss_m.update(loss.item(), y.size(0))
        acc_m.update(accuracy(logits.detach(), y)[0], y.size(0))
        progress.update(step + 1)
        if log is not None and time.perf_counter() - last_log > BATCH_LOG_INTERVAL_S:
            last_log = time.perf_counter()
            log(progress.line(f"loss {loss_m.avg:.4f} acc {acc_m.avg:.2%}"))
    return {"train_loss": loss_m.avg, "train_acc": acc_m.avg}


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (fraction) of ``model`` in eval mode over ``loader``."""
    model.eval()
    loss_m, acc_m = AverageMeter(), AverageMeter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, _ = model(x)
        loss_m.update(F.cross_entropy(logits, y).item(), y.size(0))
        acc_m.update(accuracy(logits, y)[0], y.size(0))
    return {"loss": loss_m.avg, "acc": acc_m.avg}


def _load_checkpoint(path: Path, cfg: ExperimentConfig, genotype: Genotype) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("identity") != _run_identity(cfg, genotype):
        raise ConfigError(
            "this folder holds a checkpoint of a different run (other settings or genotype); "
            "retrain into a fresh output folder, or pass resume=False (--no-resume) to start over here",
            source=str(path),
        )
    return ckpt


def retrain(
    cfg: ExperimentConfig,
    genotype: Genotype,
    out_dir: str | Path,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Train ``genotype``'s evaluation network per ``cfg``; return the final metrics and size report.

    ``on_epoch(metrics)`` runs after each epoch's checkpoint is on disk, with ``epoch`` (1-based),
    ``epochs``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``lr``, ``drop_path_prob``
    and ``elapsed_s`` (training time so far, resumed sessions included). With ``resume`` an existing
    ``out_dir/checkpoint.pt`` of the same run is continued (a checkpoint of another run raises
    :class:`~bnas.config.ConfigError`). ``log`` receives progress lines (None: silent).

    Returns ``test_acc``, ``test_loss``, ``train_acc``, ``train_loss``, ``epochs``, ``wall_time_s``,
    ``genotype_digest``, ``config_digest``, ``method``, ``seed``, ``device`` and the keys of
    :func:`~bnas.model_size.size_report`; the same dict is written to ``out_dir/final.json``.
    """
    say = log or (lambda _msg: None)
    r = cfg.retrain
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    train_loader, test_loader, info = retrain_loaders(
        cfg.data,
        r.batch_size,
        r.eval_batch_size,
        cfg.seed,
        cutout=r.cutout,
        autoaugment=r.autoaugment,
        device=device,
    )
    model = build_network(cfg, genotype, info).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=r.epochs, eta_min=r.lr_min)

    start_epoch, history, elapsed_before = 0, [], 0.0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = _load_checkpoint(ckpt_path, cfg, genotype)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, elapsed_before = ckpt["epoch"], list(ckpt["metrics"]), ckpt["elapsed_s"]
        say(f"resuming from {ckpt_path} after epoch {start_epoch}/{r.epochs}")
    else:
        atomic_write_json(cfg.to_dict(), out / CONFIG)
        genotype.save(out / GENOTYPE)

    n_train = len(train_loader.dataset)
    say(
        f"retrain {genotype.digest} ({cfg.binarization.method}, {cfg.binarization.activations} activations): "
        f"{r.layers} cells, C={r.init_channels}, {info.name} {info.image_size}px, {n_train} train / "
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
        )
        test = evaluate(model, test_loader, device)
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
        atomic_save(
            {
                "identity": _run_identity(cfg, genotype),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": get_rng_state(),
                "metrics": history,
                "elapsed_s": metrics["elapsed_s"],
            },
            ckpt_path,
        )
        atomic_write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in history), out / METRICS)
        progress.update(epoch + 1)
        say(
            progress.line(
                f"train loss {train['train_loss']:.4f} acc {train['train_acc']:.2%} | "
                f"test loss {test['loss']:.4f} acc {test['acc']:.2%} | lr {lr:.2e}"
            )
        )
        if on_epoch is not None:
            on_epoch(dict(metrics))

    last = history[-1]
    size = size_report(model)
    export_packed(model, out / PACKED)
    final = {
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "train_acc": last["train_acc"],
        "train_loss": last["train_loss"],
        "epochs": r.epochs,
        "wall_time_s": last["elapsed_s"],
        "genotype_digest": genotype.digest,
        "config_digest": cfg.digest(),
        "method": cfg.binarization.method,
        "activations": cfg.binarization.activations,
        "seed": cfg.seed,
        "device": str(device),
        "dataset": info.name,
        **size,
    }
    atomic_write_json(final, out / FINAL)
    say(
        f"done: test acc {final['test_acc']:.2%} after {r.epochs} epochs "
        f"in {format_duration(final['wall_time_s'])}; "
        f"{size['params']:,} params ({size['binary_params']:,} binary), packed {size['packed_bytes']:,} B "
        f"vs fp32 {size['fp32_bytes']:,} B -> {out / PACKED}"
    )
    return final
