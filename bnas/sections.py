"""The sections of an experiment's configuration: data, binarization, search, reduction, retraining and
runtime settings, each declared with its default, source mark and bounds (:mod:`bnas.settings`).

Marks (docs/method.md): ``[P]`` the paper states it, ``[C]`` released code, ``[R]`` recalled from the
paper's text, uncertain, ``[D]`` a design decision of this project. Names of swappable components are
checked against the torch-free catalogues (:mod:`bnas.catalog`), so this module imports no torch.
:class:`bnas.config.ExperimentConfig` holds one of each and the rules between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bnas.catalog import BINARIZATIONS, DATASETS, REDUCTIONS
from bnas.search_space import OPS
from bnas.settings import OneOf, Section, rule, setting

ALL_OPS = list(OPS)  # kept for existing importers; the search space owns the list

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig(Section):
    """Which images, where they are, and how much of them a run uses."""

    dataset: str = setting(
        "cifar10", "[D]", "registry name: cifar10, cifar100, folder or imagenet", choices=DATASETS
    )
    root: str | None = setting(
        None, "[D]", "dataset folder; None reads $BNAS_DATA_ROOT, else ./data", affects_results=False
    )
    download: bool = setting(False, "[D]", "fetch the official archive when missing", affects_results=False)
    image_size: int = setting(
        32, "[C]", "side of the square input; CPU configs use 16 or less (at most 1024 [D])", ge=8, le=1024
    )
    train_subset: int | None = setting(None, "[D]", "use only this many training images", ge=2)
    test_subset: int | None = setting(None, "[D]", "use only this many test images", ge=2)
    val_fraction: float = setting(
        0.5, "[C]", "search: share of the training images held out for the architecture step", gt=0, lt=1
    )
    num_workers: int = setting(0, "[D]", "DataLoader worker processes", ge=0, affects_results=False)
    storage: Literal["auto", "memory", "stream"] = setting(
        "auto",
        "[D]",
        "class folders: decode every image into memory once, or per item in the loader "
        "workers (stream); auto streams when the decoded images exceed memory_budget_mib. CIFAR: memory",
    )
    memory_budget_mib: int = setting(
        2048, "[D]", "storage auto: the largest decoded dataset (uint8 at image_size) held in memory", ge=1
    )
    on_bad_image: Literal["stop", "skip"] = setting(
        "stop", "[D]", "an unreadable image file: stop with an error naming it, or skip it (with a warning)"
    )
    train_fraction: float | None = setting(
        None,
        "[D]",
        "use only this share of every training class (stratified, fixed; PC-DARTS' ImageNet "
        "search: 0.125 = 10 % weights + 2.5 % architecture with val_fraction 0.2)",
        gt=0,
        le=1,
    )
    crop_scale_min: float = setting(
        0.08,
        "[C]",
        "ImageNet network: RandomResizedCrop area range [min, 1] (torchvision, DARTS)",
        gt=0,
        le=1,
    )
    color_jitter: float = setting(
        0.4, "[C]", "ImageNet network: brightness, contrast and saturation jitter (DARTS ImageNet)", ge=0
    )
    hue_jitter: float = setting(0.2, "[C]", "ImageNet network: hue jitter (DARTS ImageNet)", ge=0, le=0.5)
    eval_crop: float = setting(
        0.875,
        "[C]",
        "ImageNet network, streamed: evaluation resizes to image_size / eval_crop, then "
        "centre-crops image_size (224 of 256)",
        gt=0,
        le=1,
    )

    @rule("storage", "dataset")
    def _stream_class_folders(self) -> str | None:
        if self.storage == "stream" and self.dataset in ("cifar10", "cifar100"):
            return f"stream applies to class-folder datasets (folder, imagenet); {self.dataset} is in memory"
        return None

    @rule("train_fraction", "train_subset")
    def _one_subset_rule(self) -> str | None:
        if self.train_fraction is not None and self.train_subset is not None:
            return "set train_fraction or train_subset, not both"
        return None


@dataclass
class BinarizationConfig(Section):
    """How weights (and optionally activations) are binarized (method.md section 4)."""

    method: str = setting(
        "xnor", "[P]", "registry name: xnor, xnor_channel, pcnn or fp", choices=BINARIZATIONS
    )
    activations: Literal["real", "binary"] = setting(
        "real", "[P]", "real = w1a32 (the AAAI paper); binary = w1a1 (journal extension) [D]"
    )
    pcnn_lambda: float = setting(1e-4, "[R]", "PCNN projection-loss weight lambda (uncertain)", ge=0)
    pcnn_eta: float = setting(0.0, "[R]", "PCNN eta: 0 is the simple projection loss (uncertain)")


@dataclass
class SearchConfig(Section):
    """The super-network and its bilevel optimisation (method.md sections 2 and 5)."""

    # >= 3 cells: two of them are the reduction cells at 1/3 and 2/3 of the depth.
    layers: int = setting(
        6, "[R]", "cells in the search network (PC-DARTS: 8; at most 100 [D])", ge=3, le=100
    )
    init_channels: int = setting(16, "[R]", "channels of the first cell (at most 1024 [D])", ge=1, le=1024)
    nodes: int = setting(4, "[C]", "intermediate nodes per cell", ge=1)
    stem_multiplier: int = setting(3, "[C]", "stem channels = multiplier * init_channels", ge=1)
    sampling_k: int = setting(
        4,
        "[D]",
        "channel sampling: 1/K of the channels go through the ops (BNAS as recalled: 2 [R]; PC-DARTS: 4 "
        "[C]; K=4 measured 1.2x faster than K=2 at the cpu scale: README, search cost)",
        ge=1,
    )
    ops: list[str] = setting(
        list(ALL_OPS),
        "[C]",
        "candidate operations per edge",
        choices=OneOf(OPS, "unknown operation {value!r}"),
        min_len=1,
        unique=True,
        noun="operation",
    )
    batch_size: int = setting(128, "[R]", "super-network batch size", ge=1)
    lr: float = setting(0.025, "[R]", "SGD learning rate for the weights (cosine schedule)", gt=0)
    lr_min: float = setting(0.0, "[C]", "cosine floor (PC-DARTS uses 0)", ge=0)
    momentum: float = setting(0.9, "[R]", "SGD momentum", ge=0)
    weight_decay: float = setting(5e-4, "[R]", "SGD weight decay", ge=0)
    grad_clip: float = setting(5.0, "[C]", "gradient norm clip for the weights", ge=0)
    arch_lr: float = setting(0.01, "[R]", "Adam learning rate for alpha and beta (PC-DARTS: 6e-4)", gt=0)
    arch_weight_decay: float = setting(1e-3, "[C]", "Adam weight decay for alpha and beta", ge=0)
    arch_beta1: float = setting(0.5, "[C]", "Adam beta1 for alpha and beta", ge=0, lt=1)
    max_batches_per_epoch: int | None = setting(
        None, "[D]", "cap on batches per epoch (CPU-sized runs); null = the whole split", ge=1
    )
    validate_every: int = setting(
        5,
        "[D]",
        "validate the super-network every N epochs and in the last (DARTS: 1; PC-DARTS's code: the last "
        "only [C]); 5 = once per stage of L = 5 epochs. No genotype depends on it; epochs between report "
        "no val_acc (a study with ASHA validates every epoch unless it sets this)",
        ge=1,
    )
    val_max_batches: int | None = setting(
        None, "[D]", "cap on batches of the per-epoch validation; null = max_batches_per_epoch", ge=1
    )
    checkpoint_every: int = setting(
        5,
        "[D]",
        "write checkpoint.pt every N epochs (always after a reduction, so 5 = once per stage); results do "
        "not change: a resumed search repeats the uninterrupted one",
        ge=1,
        affects_results=False,
    )
    none_op: Literal["candidate", "exclude"] = setting(
        "exclude",
        "[D]",
        "exclude: the super-network is built without `none` (DARTS's derivation never picks it, edge "
        "strength is beta's job; one stage fewer); candidate [P]: `none` is one of the ops, reduced like "
        "the others (it is then never left alone on an edge)",
    )
    max_param_free: int | None = setting(
        2,
        "[D]",
        "collapse guard (P-DARTS keeps <= 2 skips): at most this many parameter-free ops (skip, pools) "
        "in a derived cell; an edge over the cap is replaced by the node's strongest parametric "
        "candidate where one is left; null = no cap",
        ge=0,
    )
    collapse_stop: float | None = setting(
        None,
        "[D]",
        "collapse guard (DARTS+ early stop): a stage's super-network epochs end early once the current "
        "argmax normal cell reaches this parameter-free share; null = off",
        gt=0,
        le=1,
    )
    degenerate_share: float = setting(
        0.75,
        "[D]",
        "a derived cell with at least this parameter-free share is reported degenerate (warned at the "
        "end of a search and in the study summary; a uniformly random cell has 3/7)",
        gt=0,
        le=1,
    )
    proxy_steps: int = setting(
        20,
        "[D]",
        "the proxy (proxy_val_acc, the same for every strategy): the derived discrete network "
        "fine-tuned this many SGD steps from the shared weights, then scored on the validation split",
        ge=0,
    )

    def candidate_ops(self) -> list[str]:
        """The operations the super-network is built with: ``ops``, less ``none`` when ``none_op`` is
        ``exclude``."""
        return [o for o in self.ops if not (self.none_op == "exclude" and o == "none")]

    @rule("init_channels", "sampling_k")
    def _channels_split_into_k(self) -> str | None:
        # Partial channel connections send C/K channels through the ops (method.md section 5).
        k = self.sampling_k
        if self.init_channels % k:
            return f"{self.init_channels} is not divisible by sampling_k={k}; choose a multiple of {k}"
        return None

    @rule("ops")
    def _an_op_that_computes(self) -> str | None:
        if all(o == "none" for o in self.ops):
            return "needs at least one operation other than 'none'"
        return None


@dataclass
class ReductionConfig(Section):
    """The pruning schedule: operation space reduction (method.md section 6)."""

    strategy: str = setting(
        "performance", "[P]", "registry name: performance, alpha, none or ucb", choices=REDUCTIONS
    )
    epochs_per_stage: int = setting(5, "[R]", "L: super-network epochs per stage", ge=1)
    warmup_epochs: int = setting(3, "[R]", "W: first-stage epochs with alpha frozen", ge=0)
    rounds: int = setting(3, "[R]", "T: sampling rounds per stage", ge=1)
    subnet_epochs: int = setting(
        0,
        "[D]",
        "V: epochs each sampled sub-network trains before it is scored (the paper as recalled: 1 [R]); "
        "0 = scored with the inherited weights: 1/3 of the search time saved at the cpu scale with no "
        "measured loss of signal (README, search signal)",
        ge=0,
    )
    subnet_weights: Literal["shared", "snapshot"] = setting(
        "snapshot",
        "[D]",
        "with V > 0: snapshot = each sampled sub-network starts from the same snapshot of weights, BN "
        "buffers and optimizer state, restored after it is scored, and sees the same training batches "
        "(its score does not depend on its position); shared [R] = they train one after another on the "
        "super-network's weights and keep the changes (a later one starts from better weights)",
    )
    subnet_score: Literal["accuracy", "loss"] = setting(
        "loss",
        "[D]",
        "what scores a sampled sub-network on the stage's fixed validation batches: loss = minus the mean "
        "cross-entropy (continuous, less noisy on a few hundred images), or accuracy [P]",
    )
    estimate: Literal["edge", "pooled"] = setting(
        "edge",
        "[P]",
        "performance strategy: an op's ybar is the mean of its sub-networks' scores on that edge (edge), "
        "or that mean shrunk towards the op's mean over all edges of the cell type by how much the edges "
        "really differ (pooled [D], empirical Bayes: a sub-network's score mixes all its edges' ops, so "
        "one edge alone is measured with little power)",
    )
    min_pool: int = setting(
        2,
        "[D]",
        "at least this many ops (or all left) sampled per edge: 2 = both of the last two ops are measured; "
        "1 = the paper as recalled [R], whose lower-alpha half holds 1 op when 2 are left, so the last "
        "stage is decided by the running likelihood alone, never by a measurement",
        ge=1,
    )
    subnet_batch_size: int = setting(400, "[R]", "batch size of the sampled sub-networks", ge=1)
    subnet_max_batches: int | None = setting(
        None, "[D]", "cap on batches per sub-network epoch (CPU-sized runs); null = whole split", ge=1
    )
    subnet_eval_batches: int | None = setting(
        None,
        "[R]",
        "validation batches that score a sampled sub-network; null = the whole split (capped by "
        "search.max_batches_per_epoch)",
        ge=1,
    )
    temperature: float = setting(
        0.05, "[D]", "tau in softmax(acc/tau): accuracies in [0, 1] give a flat softmax at tau=1", gt=0
    )
    ucb_c: float = setting(1.0, "[D]", "ucb strategy: weight of sqrt(2 ln N / n_o)", ge=0)
    stages: int | None = setting(
        None, "[D]", "number of stages; null = (ops per edge) - 1, i.e. until one op is left", ge=1
    )

    @rule("warmup_epochs", "epochs_per_stage")
    def _warmup_within_a_stage(self) -> str | None:
        if self.warmup_epochs > self.epochs_per_stage:
            return f"{self.warmup_epochs} exceeds epochs_per_stage={self.epochs_per_stage}"
        return None


@dataclass
class RetrainConfig(Section):
    """Training the evaluation network built from a genotype (method.md section 8)."""

    layers: int = setting(
        20, "[C]", "cells in the evaluation network (at most 100 [D])", ge=3, le=100
    )  # 2 reduce
    init_channels: int = setting(
        36, "[C]", "channels of the first cell (the larger model: 44; at most 1024 [D])", ge=1, le=1024
    )
    auxiliary: bool = setting(True, "[C]", "auxiliary head after the second reduction cell")
    auxiliary_weight: float = setting(0.4, "[C]", "weight of the auxiliary loss", ge=0)
    epochs: int = setting(600, "[R]", "training epochs", ge=1)
    batch_size: int = setting(96, "[R]", "training batch size", ge=1)
    eval_batch_size: int = setting(256, "[D]", "batch size for evaluation", ge=1)
    lr: float = setting(0.025, "[R]", "SGD learning rate (cosine to lr_min)", gt=0)
    lr_min: float = setting(0.0, "[R]", "cosine floor", ge=0)
    momentum: float = setting(0.9, "[R]", "SGD momentum", ge=0)
    weight_decay: float = setting(3e-4, "[R]", "SGD weight decay", ge=0)
    grad_clip: float = setting(5.0, "[R]", "gradient norm clip", ge=0)
    drop_path_prob: float = setting(0.2, "[R]", "final drop-path probability (linear ramp)", ge=0, lt=1)
    cutout: int = setting(16, "[R]", "cutout side in pixels (scaled with image_size); 0 = off", ge=0)
    autoaugment: bool = setting(False, "[C]", "AutoAugment CIFAR-10 policy (released transform)")
    bn_eps: float = setting(1e-3, "[C]", "BatchNorm epsilon of the evaluation network", ge=0)
    max_batches_per_epoch: int | None = setting(
        None, "[D]", "cap on batches per epoch (CPU-sized runs); null = the whole split", ge=1
    )
    checkpoint_every: int = setting(
        5,
        "[D]",
        "write checkpoint.pt every N epochs and after the last (search.checkpoint_every's rule); results "
        "do not change: a resumed run repeats the uninterrupted one",
        ge=1,
        affects_results=False,
    )
    label_smoothing: float = setting(
        0.0, "[C]", "label smoothing of the training loss (DARTS / PC-DARTS ImageNet: 0.1)", ge=0, lt=1
    )
    lr_schedule: Literal["cosine", "step"] = setting(
        "cosine",
        "[C]",
        "cosine: lr to lr_min over the epochs (DARTS CIFAR); step: lr * lr_gamma after "
        "every epoch (DARTS ImageNet)",
    )
    lr_gamma: float = setting(0.97, "[C]", "lr_schedule step: decay per epoch (DARTS ImageNet)", gt=0, le=1)


#: ``auto`` / ``on`` / ``off``; YAML reads a bare on/off as a boolean, so true/false are accepted too.
Switch = Literal["auto", "on", "off"] | bool


@dataclass
class RuntimeConfig(Section):
    """How fast a run computes on its device (:mod:`bnas.accel`), never what it computes.

    ``auto`` turns a speed-up on for CUDA and leaves it off on the CPU, so CPU results stay bit for bit
    what they were; ``batch_edges`` is on everywhere (it changes the order of float sums only).
    Switched on, bf16 autocast and channels_last change the numbers within float tolerance (not bit for
    bit); none of these settings is part of a checkpoint's identity, so a run may resume on another
    device with other settings.
    """

    amp: Literal["auto", "bf16", "off"] | bool = setting(
        "auto",
        "[D]",
        "bf16 autocast of forward passes (BN statistics, loss in fp32); auto = off (measured "
        "5-17 % slower than fp32 on an H200 for these launch-bound networks; halves GPU memory)",
        affects_results=False,
    )
    channels_last: Switch = setting(
        "auto",
        "[D]",
        "channels_last memory format for model and inputs; auto = off (measured slower on an H200, with amp)",
        affects_results=False,
    )
    cudnn_benchmark: Switch = setting(
        "auto",
        "[D]",
        "torch.backends.cudnn.benchmark inside the run (restored after); auto = on for CUDA",
        affects_results=False,
    )
    data_on_device: Switch = setting(
        "auto",
        "[D]",
        "uint8 images held on the device, augmented there in batches; auto = on for CUDA "
        "when they fit (data_device_fraction) and AutoAugment is off",
        affects_results=False,
    )
    data_device_fraction: float = setting(
        0.25,
        "[D]",
        "data_on_device auto: the images may take at most this share of free device memory",
        gt=0,
        le=1,
        affects_results=False,
    )
    batch_edges: bool = setting(
        True,
        "[D]",
        "the super-network's mixed pass runs the edges of a cell that leave the same states as one "
        "grouped convolution per operation (bnas.batched_edges); the same maths as one edge at a time, "
        "float sums in another order (last bits)",
        affects_results=False,
    )
    compile: bool = setting(
        False,
        "[D]",
        "torch.compile the super-network (recompiled after each reduction) and the evaluation network",
        affects_results=False,
    )
    subnet_batch: int | Literal["auto"] = setting(
        "auto",
        "[D]",
        "sampled sub-networks scored in one pass, stacked along the batch (only when they "
        "are not trained first: reduction.subnet_epochs 0); 1 = one at a time; auto = a whole round on "
        "CUDA (launch-bound there), 1 on the CPU (compute-bound: no gain measured)",
        ge=1,
        affects_results=False,
    )
