"""NeuralGS as a nerfstudio model: a trained splat compressed into clustered neural fields.

Training (`ns-train neuralgs --pipeline.model.teacher PATH`) runs, before the first step:
  A  importance of every teacher Gaussian over the training views, prune the weakest;
  B  min-max normalise the attributes, k-means them into clusters;
  C  fit one tiny MLP per cluster (position -> attributes), importance-weighted;
and then stage D is the training loop itself: only the MLP weights train, rendered through
`rasterize` against the training images with L1 + SSIM + frequency losses.

The model exposes splatfacto's Gaussian properties (`means`, `scales`, `quats`,
`features_dc`, `features_rest`, `opacities`), decoded from the MLPs and cached until the
next optimiser step, so nerfstudio's viewer and `ns-export gaussian-splat` work unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils.comms import is_main_process
from nerfstudio.utils.rich_utils import CONSOLE

from neuralgs_ns.codec.quantize import (MAX_POSITION_BITS, dequantize_residuals, quantize_positions, residual_codes,
                                        round_to_residual_steps, snap_positions, storage_order)
from neuralgs_ns.compress.averaging import TrailingMean
from neuralgs_ns.compress.clustering import (NormalizationTable, attribute_count, attribute_groups, attribute_matrix,
                                             cluster_count, kmeans_clusters)
from neuralgs_ns.compress.field import (ClusteredMLPField, FieldConfig, decode_gaussians, decode_normalized,
                                        field_from_state_dict, fit_field)
from neuralgs_ns.compress.guard import FineTuneGuard
from neuralgs_ns.compress.importance import importance_scores, prune_mask, pruned_count
from neuralgs_ns.compress.losses import NeuralGSLossConfig, photometric_loss
from neuralgs_ns.compress.rate import (MAX_PRUNE_FRACTION, MIN_MLP_WIDTH, SIZE_MARGIN, SNAP_PSNR_DB, FieldPlan,
                                       capped_mlp_width, choose_position_bits, choose_prune_fraction,
                                       choose_residual_step, clusters_to_spend, default_target_bytes,
                                       mlp_bytes_per_cluster, plan_capacity, plan_for_size, prune_fraction_for_size,
                                       prune_fraction_to_spend, residual_step_for_budget, smallest_size,
                                       steps_for_scene, target_size_bytes)
from neuralgs_ns.errors import NeuralGSError
from neuralgs_ns.formats import load_teacher
from neuralgs_ns.gaussians import SH_C0, Gaussians
from neuralgs_ns.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig, get_viewmat
from neuralgs_ns.progress import StageTimer, progress_bar

PresetName = Literal["auto", "neuralgs", "cpu"]
TARGET_SIZE_FLOOR = 0.9
"""A file under this share of its target size is reported: the target could not be spent."""
COMPRESSED_FILE_NAME = "scene.ngs"
"""What `ns-train neuralgs` writes into its run directory after the last step."""
MIN_RESIDUAL_STEP = 0.001  # codes within +-RESIDUAL_RANGE then span 4001 values, under the coder's 4096
AttributeGroup = Literal["opacity", "scales", "rotations", "dc", "sh_rest"]
AUTO_RESIDUALS = "auto"
"""residual_attributes value: the one group whose corrections raise the stage C fit most."""
AUTO_RESIDUAL_CANDIDATES = ("opacity", "scales", "rotations", "dc")
"""The groups "auto" chooses from: sh_rest (45 columns at degree 3) costs too much per Gaussian."""

PRESETS: Dict[str, Dict[str, float]] = {
    # The paper's settings (NEURALGS.md): for a GPU.
    "neuralgs": dict(field_frequencies=10, field_width=128, field_depth=5, target_cluster_size=20000,
                     min_clusters=1, fit_iterations=60000, fit_batch_per_cluster=8192, fine_tune_iterations=25000,
                     max_mlp_bits_per_gaussian=math.inf, residual_attributes=(), residual_step=None,
                     size_rule=False, prune_psnr_db=0.0, average_fraction=0.0, fine_tune_lr_final=1e-4,
                     small_scene_factor=1, large_scene_factor=1),
    # Sized for a 2-core CPU. A stage D step evaluates one MLP per Gaussian, so capacity comes
    # from more clusters (5k Gaussians each, and at least 12 of at least 2.5k on small scenes)
    # of smaller MLPs (4 layers of 64) rather than from wider ones: on lego-200, 24 clusters
    # reached 25.4 dB after 300 fine-tune steps where 6 reached 23.8 dB, at the same cost per
    # step; on a 50k-Gaussian .ply, 12 clusters reached 30.3 dB where 6 reached 28.3 dB (after
    # 1500 steps with the fine-tune guard: 30.91 and 29.23 dB). Scenes small after pruning get
    # up to 3x the 1500 fit and fine-tune steps (`scene_steps`), which the final
    # rate of 3e-4 and the averaging of the last 10% turn into quality (docs/tuning.md);
    # scenes above 90k kept get fewer, down to a fifth past 450k (docs/results/scale.md).
    # Mini-batches of 1024 Gaussians per cluster while fitting. On small scenes the
    # MLPs would dominate the file (49 bits per Gaussian on a 30k-Gaussian scene), so their
    # width is capped at 36 bits per Gaussian (`compress.rate`): the 50k .ply gets 4 x 48 MLPs,
    # 194 KB and 30.68 dB with 11-bit positions and 3000 steps, against 280 KB and 30.86 dB.
    "cpu": dict(field_frequencies=6, field_width=64, field_depth=4, target_cluster_size=5000, min_clusters=12,
                fit_iterations=1500, fit_batch_per_cluster=1024, fine_tune_iterations=1500,
                max_mlp_bits_per_gaussian=36, residual_attributes=(), residual_step=None, size_rule=True,
                prune_psnr_db=0.0, average_fraction=0.1, fine_tune_lr_final=3e-4, small_scene_factor=3,
                large_scene_factor=0.2),
}


def resolve_preset(name: PresetName, device: str) -> str:
    """'auto' is the paper's preset on CUDA and the CPU preset elsewhere."""
    if name == "auto":
        return "neuralgs" if str(device).startswith("cuda") else "cpu"
    return name


def scene_steps(config: "NeuralGSModelConfig", name: Literal["fit_iterations", "fine_tune_iterations"],
                device: str, n_gaussians: int) -> int:
    """Stage C ('fit_iterations') or stage D ('fine_tune_iterations') steps for a scene of
    `n_gaussians` kept Gaussians: the value set in `config`, else the preset's, scaled for the
    scene's size within the preset's `small_scene_factor` and `large_scene_factor`
    (`compress.rate.steps_for_scene`)."""
    value = getattr(config, name, None)
    if value is not None:
        return value
    preset = PRESETS[resolve_preset(config.preset, device)]
    return steps_for_scene(preset[name], n_gaussians, preset["small_scene_factor"], preset["large_scene_factor"])


def _snapped_in_storage_order(means: Tensor, labels: Tensor, bits: int):
    """(positions [N, 3] snapped to a `bits` grid and in the file's order, the grid [2, 3], the
    order [N] that put them there)."""
    positions, grid = snap_positions(means, bits)
    order = storage_order(quantize_positions(positions, grid.to(means.device), bits), labels)
    return positions[order], grid, order


class TeacherError(NeuralGSError):
    """The teacher is missing or does not match the dataset."""


@dataclass
class NeuralGSModelConfig(PortableSplatfactoModelConfig):
    """NeuralGS: compresses a trained splat into per-cluster neural fields (stages A-D)."""

    _target: Type = field(default_factory=lambda: NeuralGSModel)
    teacher: Optional[Path] = None
    """Trained scene to compress: a splatfacto .ckpt, its run directory or config.yml, or a 3DGS .ply."""
    preset: PresetName = "auto"
    """Size of the MLPs and length of the fitting: 'neuralgs' (paper, for GPUs), 'cpu' (small,
    for a laptop), 'auto' (by device). Fields below left unset take the preset's value."""
    importance_beta: float = 0.1
    """Exponent of the normalised volume in the importance score (LightGaussian's 0.1)."""
    prune_fraction: float = 0.4
    """Fraction of the least important Gaussians removed before fitting (paper: 0.4); with
    prune_psnr_db above 0, the most that is removed. A target size may prune more, or less when
    it is more than the kept Gaussians' MLPs can use."""
    prune_psnr_db: Optional[float] = None
    """Above 0: prune less than prune_fraction where it shows, to the largest fraction (in steps
    of 5%) whose pruned teacher renders 8 training views at this PSNR or more against the full
    teacher's renders (`compress.rate.choose_prune_fraction`; 40.5 is the position grid's bar).
    A target size may still prune more. (preset: 0 in both; measured in docs/tuning.md)"""
    importance_weighting: bool = True
    """Weight the MLP fitting loss by importance (Eq. 3). Off: the ablation with plain MSE."""
    clustering: bool = True
    """One MLP per k-means cluster. Off: the ablation with one MLP for the whole scene."""
    target_cluster_size: Optional[int] = None
    """Gaussians per cluster the cluster count aims for (preset: paper v2 about 20k, cpu 5k)."""
    min_clusters: Optional[int] = None
    """Small scenes get up to this many clusters, down to half the target size each
    (preset: paper 1, cpu 12)."""
    n_clusters: Optional[int] = None
    """Explicit number of clusters (overrides target_cluster_size and min_clusters)."""
    seed: int = 0
    """Seed of k-means, the MLP initialisation and the fitting's mini-batches."""
    field_frequencies: Optional[int] = None
    """Positional-encoding octaves of each MLP (preset: paper 10, cpu 6)."""
    field_width: Optional[int] = None
    """Hidden width of each MLP (preset: paper 128, cpu 64, narrower where the cap below
    requires). Set, it is used as given."""
    max_mlp_bits_per_gaussian: Optional[float] = None
    """Cap on the MLPs' share of the file, in bits per Gaussian, met by narrowing the MLPs of
    small scenes in steps of 8 (preset: paper none, cpu 36; lego-200 needs 25)."""
    field_depth: Optional[int] = None
    """Linear layers per MLP (preset: paper 5, cpu 4)."""
    field_activation: Literal["tanh", "relu", "silu"] = "tanh"
    """Hidden activation of the MLPs (paper: tanh)."""
    field_precision: Literal["int8", "float16", "float32"] = "int8"
    """Precision the MLP weights are stored in; training always sees the stored values.
    int8 (a float16 scale per output unit) halves the MLP bytes of float16; measured on lego-200
    it costs 0.01 dB before fine-tuning, which then trains the int8 weights themselves."""
    int8_fraction: float = 0.2
    """With int8 weights: the last fraction of the fine-tune steps trains the int8 weights
    themselves (quantisation-aware); stage C and the steps before evaluate float16. Training
    int8 from the start lost 0.9 dB on the 50k .ply: updates smaller than a quantisation step
    only move the master weights, so the stored weights change in jumps."""
    position_bits: Optional[int] = None
    """Grid resolution per axis of the stored positions (the bounding box split into 2^bits
    steps); each bit costs about 3 bits per Gaussian in the file. None: the coarsest grid (10 to
    16 bits) at which the pruned teacher, snapped to it, renders within position_snap_psnr_db
    of its exact renders on 8 training views (lego-200: 13 bits, the 50k .ply: 11)."""
    position_snap_psnr_db: float = SNAP_PSNR_DB
    """See position_bits."""
    target_size: Optional[str] = None
    """Size of the compressed file: bytes, or e.g. 500KB, 1.5MB, 800KiB (K, M decimal). The file
    is at most this and at least 90% of it: pruning, position grid, MLP width and the step of
    the corrections are chosen to fit (`compress.rate`). None: size_rule decides."""
    size_rule: Optional[bool] = None
    """Without target_size: aim the file at the default size rule's
    (`compress.rate.default_target_bytes`: 11 bits per teacher Gaussian plus 0.45 per
    attribute, 16 bits at SH degree 0 and 36.2 at degree 3). Off: the preset's fixed
    settings, whatever size they make (preset: paper off, cpu on)."""
    residual_attributes: Optional[Tuple[Literal[AttributeGroup, "auto"], ...]] = None
    """Attribute groups that also get a per-Gaussian correction of the MLP's prediction, stored
    entropy coded as integer multiples of residual_step (`codec.residuals`) and trained in
    stage D with the MLPs. Initialised to what the MLP misses of the teacher after stage C.
    "auto": the one group of opacity, scales, rotations and dc whose corrections (at the step the
    size budget allows, or exact without a target size) bring the stage C fit closest to the
    pruned teacher on 8 training views; which group matters depends on the scene.
    (preset: paper none, cpu none)."""
    residual_step: Optional[float] = None
    """Quantisation step of the corrections, in the normalised [-1, 1] attribute space: larger
    is fewer bits and a coarser correction. None: chosen by residual_psnr_db (both presets)."""
    residual_psnr_db: float = 40.0
    """With residual_step unset: the coarsest step (0.5 down to 0.002, by factors of sqrt 2) at
    which the stage C fit plus its corrections renders at this PSNR or more against the pruned
    teacher on 8 training views."""
    fit_iterations: Optional[int] = None
    """Adam steps of stage C, all clusters at once (preset: paper 60000, cpu 1500; `neuralgs
    compress` gives scenes under 90k Gaussians after pruning up to 3x that, `scene_steps`)."""
    fit_batch_per_cluster: Optional[int] = None
    """Gaussians drawn per cluster per fitting step (preset: paper 8192, cpu 1024)."""
    fit_lr: float = 1e-2
    """Initial learning rate of stage C (decays to 1% of it)."""
    loss: NeuralGSLossConfig = field(default_factory=NeuralGSLossConfig)
    """Stage D's fine-tuning loss."""
    average_fraction: Optional[float] = None
    """Replace the MLP weights and corrections at the end of stage D by their mean over this
    last fraction of its steps (0: the last step's). Single-view steps leave the weights
    jittering about where the schedule has brought them; their mean sits nearer the middle.
    (preset: paper 0, cpu 0.1)."""
    fine_tune_guard: bool = True
    """Restart stage D from the stage C fit at a 10x smaller learning rate (at most twice) when
    its first steps double the training loss or leave it above the fit's after 100 steps
    (`compress.guard`). Costs one render of each training view after stage C."""
    frame_check_views: int = 4
    """Training views the teacher is rendered at to check it sits in the dataset's frame."""
    frame_check_margin_db: float = 2.0
    """The teacher must beat an empty (background-only) render by this PSNR margin on those
    views, else it is taken not to sit in the dataset's frame."""
    num_downscales: int = 0
    """Fine-tune at full resolution from the first step (splatfacto starts at 1/4)."""
    background_color: Literal["random", "black", "white"] = "white"
    """Background of the renders and of RGBA ground truth."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuses, in one line, values no stage could use, so `ns-train neuralgs` and
        `neuralgs compress` fail before loading anything rather than in the stage that uses them.
        Run again after setting fields on a built config."""
        def refuse(option: str, problem: str) -> None:
            flag = option.replace("_", "-")
            where = f"--{flag} in neuralgs compress, " if option in ("prune_fraction", "position_bits") else ""
            raise NeuralGSError(f"{flag} {problem} ({where}--pipeline.model.{flag} in ns-train)")

        if not 0.0 <= self.prune_fraction < 1.0:
            refuse("prune_fraction", f"must be in [0, 1), got {self.prune_fraction}")
        if self.position_bits is not None and not 1 <= self.position_bits <= MAX_POSITION_BITS:
            refuse("position_bits", f"must be between 1 and {MAX_POSITION_BITS}, got {self.position_bits}")
        if self.n_clusters is not None and self.n_clusters < 1:
            refuse("n_clusters", f"must be 1 or more, got {self.n_clusters}")
        if not 0.0 <= self.int8_fraction <= 1.0:
            refuse("int8_fraction", f"must be in [0, 1], got {self.int8_fraction}")
        target_bytes(self)  # a size that does not parse

    def preset_value(self, name: str, device: str):
        value = getattr(self, name)
        return PRESETS[resolve_preset(self.preset, device)][name] if value is None else value

    def field_config(self, device: str) -> FieldConfig:
        return FieldConfig(n_frequencies=self.preset_value("field_frequencies", device),
                           width=self.preset_value("field_width", device),
                           depth=self.preset_value("field_depth", device), activation=self.field_activation,
                           weight_precision=self.field_precision)


def target_bytes(config: NeuralGSModelConfig) -> Optional[int]:
    """`config.target_size` in bytes, or None; a NeuralGSError for a size that does not parse."""
    return target_size_bytes(config.target_size)


def smallest_file_bytes(config: NeuralGSModelConfig, teacher: Gaussians, device: str) -> int:
    """The smallest file possible for `teacher` with `config`'s MLPs (`rate.smallest_size`)."""
    field_cfg = config.field_config(device)
    n_attributes = attribute_count(teacher.sh_degree)
    narrowest = mlp_bytes_per_cluster(field_cfg.n_frequencies, MIN_MLP_WIDTH, field_cfg.depth, n_attributes,
                                      field_cfg.weight_precision)
    return smallest_size(teacher.means, n_attributes, narrowest)


def check_target_size(config: NeuralGSModelConfig, teacher: Gaussians, device: str) -> None:
    """Refuses, before any long work, a target size below the smallest file possible."""
    target = target_bytes(config)
    if target is None:
        return
    floor = smallest_file_bytes(config, teacher, device)
    if target < floor:
        raise NeuralGSError(f"--target-size {target:,} B is too small for {config.teacher}: the smallest file "
                            f"possible is about {floor:,} B ({1 - MAX_PRUNE_FRACTION:.0%} of its {len(teacher):,} "
                            f"Gaussians on a 10-bit grid, one MLP of width {MIN_MLP_WIDTH})")


class NeuralGSModel(PortableSplatfactoModel):
    """Gaussians decoded from per-cluster MLPs; see the module docstring.

    State (the checkpoint): `positions` [N, 3] grouped by cluster and snapped to
    `position_grid` [2, 3] (origin, step: see `codec.quantize`), `labels` [N],
    `attribute_mins` / `attribute_maxs` [D] (the normalisation table) and the field's MLPs.
    """

    config: NeuralGSModelConfig

    def populate_modules(self):
        self.populate_shared_modules()
        self.strategy = None  # positions are frozen: no densification
        self.register_buffer("positions", torch.zeros(0, 3))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("position_grid", torch.zeros(2, 3))  # origin and step of the stored positions
        self.register_buffer("attribute_mins", torch.zeros(0))
        self.register_buffer("attribute_maxs", torch.zeros(0))
        # Per-Gaussian corrections [N, C] of attribute columns residual_columns [C], trained as
        # float and evaluated at their stored steps residual_steps [C].
        self.register_buffer("residual_columns", torch.zeros(0, dtype=torch.long))
        self.register_buffer("residual_steps", torch.zeros(0))
        # Stage A's score of each kept Gaussian: which corrections a size target drops first.
        self.register_buffer("importance", torch.zeros(0))
        self.residuals = torch.nn.Parameter(torch.zeros(0, 0))
        self.field: Optional[ClusteredMLPField] = None
        self.stage_seconds: Dict[str, float] = {}
        self._field_version = 0  # bumped after every optimiser step
        self._decoded: Optional[Gaussians] = None
        self._decoded_version = -1
        self.guard: Optional[FineTuneGuard] = None  # set after stage C (not on resume)
        self._guard_snapshot: Optional[Dict[str, Tensor]] = None  # the stage C weights
        self._last_step_loss: Optional[tuple] = None  # (training view, loss) of the current step
        # The pruned teacher's normalised attributes in the model's order (stage C's targets),
        # for diagnostics such as benchmarks/bench_attributes.py; not saved in checkpoints.
        self.fit_targets: Optional[Tensor] = None
        self._average: Optional[TrailingMean] = None  # of the last steps' trained tensors
        # The default size rule's target (`_default_target_bytes`), set in stage A; None with a
        # user's target size, the paper preset or a resumed run.
        self.default_target: Optional[int] = None
        self.n_pruned: Optional[int] = None  # Gaussians stage A removed; None on a resumed run

    # --- stages A-C ----------------------------------------------------------------------

    def compress_teacher(self, datamanager) -> None:
        """Stages A, B and C on the teacher, with the training views of `datamanager`; with a
        target size, each stage also takes its share of the plan (`compress.rate`)."""
        cfg = self.config
        if cfg.teacher is None:
            raise TeacherError("neuralgs needs a teacher: --pipeline.model.teacher PATH "
                               "(a splatfacto run, its .ckpt or config.yml, or a 3DGS .ply)")
        device = self.device
        timer = StageTimer()
        with timer.stage("Load teacher"):
            teacher = load_teacher(cfg.teacher).to(device)
            n_attributes = attribute_count(teacher.sh_degree)
            check_target_size(cfg, teacher, str(device))
            cameras = datamanager.train_dataset.cameras.to(device)
            views = [self._view(cameras[i : i + 1]) for i in range(len(cameras))]
            teacher = self._teacher_in_dataset_frame(teacher, views, datamanager)
            CONSOLE.log(f"teacher: {len(teacher)} Gaussians, SH degree {teacher.sh_degree}")
            self.default_target = self._default_target_bytes(teacher)
            target = self.target_bytes()

        with timer.stage("Stage A: importance"):
            from neuralgs_ns.compress.pipeline_run import frame_check_indices

            with progress_bar("importance over training views", len(views)) as advance:
                all_scores = importance_scores(teacher, views, beta=cfg.importance_beta, progress=advance)
            checked = [views[i] for i in frame_check_indices(len(views), 8)]
            fraction = self._prune_fraction(teacher, all_scores, checked)
            # With a target the MLPs cannot spend: lift the small-scene width cap, add clusters.
            uncapped, spend_clusters = False, 1
            if target is not None:
                fraction = prune_fraction_for_size(target, len(teacher), fraction)
                fraction, uncapped, spend_clusters = self._spend_large_target(target, len(teacher), fraction,
                                                                            n_attributes)

        with timer.stage("Stage B: clustering"):
            while True:  # with a target size: prune more until the positions fit
                keep = prune_mask(all_scores, fraction)
                kept, scores = teacher.subset(keep), all_scores[keep]
                attributes = attribute_matrix(kept)
                table = NormalizationTable.fit(attributes)
                normalized = table.normalize(attributes)
                k = max(self._cluster_count(len(kept)), spend_clusters)
                labels = kmeans_clusters(normalized, k, seed=cfg.seed).to(device)
                bits = cfg.position_bits
                if bits is None:
                    bits, measured = choose_position_bits(kept, checked, cfg.position_snap_psnr_db)
                    coarser = f"; {bits - 1} bits: {measured[bits - 1]:.1f} dB" if bits - 1 in measured else ""
                    CONSOLE.log(f"position grid: {bits} bits per axis (the teacher snapped to it renders at "
                                f"{measured[bits]:.1f} dB of its exact renders{coarser})")
                # Snapped to the file's position grid, so the MLPs fit the positions a decoder sees,
                # and put in the file's order (by cluster, then Morton order), so a decoded file
                # lists the Gaussians in the model's order.
                positions, grid, order = _snapped_in_storage_order(kept.means, labels, bits)
                if target is None:
                    break
                plan = plan_for_size(target, positions, labels[order], bits, n_attributes,
                                     self._planned_field_config(len(kept), k, n_attributes, capped=not uncapped))
                if plan is not None or fraction >= MAX_PRUNE_FRACTION:
                    break
                fraction = min(MAX_PRUNE_FRACTION, round(fraction + 0.05, 2))
                CONSOLE.log(f"target size {target:,} B: the positions do not fit at this pruning; pruning "
                            f"{fraction:.0%}")
            if target is not None:
                if plan is None:
                    raise NeuralGSError(f"--target-size {target:,} B is too small for {cfg.teacher}: even at "
                                        f"{MAX_PRUNE_FRACTION:.0%} pruning its positions do not fit")
                if plan.position_bits != bits:
                    bits = plan.position_bits
                    positions, grid, order = _snapped_in_storage_order(kept.means, labels, bits)
                CONSOLE.log(f"target size {target:,} B: {plan.summary()}")
            labels, normalized, scores = labels[order], normalized[order], scores[order]
            CONSOLE.log(f"pruned {len(teacher) - len(kept)} of {len(teacher)} Gaussians ({fraction:.0%}); {k} clusters, "
                        f"sizes {torch.bincount(labels, minlength=k).tolist()}")

        with timer.stage("Stage C: fit MLPs"):
            field_cfg = cfg.field_config(str(device))
            field_cfg.width = plan.mlp_width if target is not None else self._planned_field_config(
                len(kept), k, n_attributes).preset_width
            mlp = ClusteredMLPField.from_points(field_cfg, positions, labels, n_attributes,
                                                n_clusters=k, seed=cfg.seed).to(device)
            mlp.int8_active = False  # until the last int8_fraction of fine-tuning
            iterations = cfg.preset_value("fit_iterations", str(device))
            with progress_bar("fit per-cluster MLPs", iterations) as advance:
                fit_field(mlp, positions, labels, normalized, scores if cfg.importance_weighting else None,
                          iterations=iterations, lr=cfg.fit_lr, lr_final=cfg.fit_lr / 100,
                          batch_per_cluster=cfg.preset_value("fit_batch_per_cluster", str(device)),
                          seed=cfg.seed, progress=lambda step, loss: advance(info=f"loss {loss:.2e}"))
            CONSOLE.log(f"{k} MLPs of {field_cfg.depth} x {field_cfg.width}, {mlp.n_parameters()} parameters")

        self.positions, self.labels, self.position_grid = positions.detach(), labels, grid.to(device)
        self.n_pruned = len(teacher) - len(kept)
        self.attribute_mins, self.attribute_maxs = table.mins.to(device), table.maxs.to(device)
        self.importance = scores.detach().float()
        self.field = mlp
        self.fit_targets = normalized.detach()
        self.config.sh_degree = teacher.sh_degree
        self._init_residuals(normalized, None if target is None else plan.residual_budget(), kept, checked)
        self._field_version += 1
        if cfg.fine_tune_guard:
            with timer.stage("Stage C: loss per view"):
                self._arm_guard(datamanager)
        self.stage_seconds.update(timer.seconds)

    def _prune_fraction(self, teacher: Gaussians, scores: Tensor, views) -> float:
        """prune_fraction, or with prune_psnr_db the largest fraction up to it that `views`
        (training views) barely notice."""
        cfg = self.config
        min_psnr_db = cfg.preset_value("prune_psnr_db", str(self.device))
        if min_psnr_db <= 0 or cfg.prune_fraction <= 0:
            return cfg.prune_fraction
        fraction, measured = choose_prune_fraction(teacher, scores, views, cfg.prune_fraction, min_psnr_db)
        tried = ", ".join(f"{f:.0%}: {db:.1f} dB" for f, db in measured.items())
        CONSOLE.log(f"pruning {fraction:.0%}: the pruned teacher against its exact renders of {len(views)} training "
                    f"views: {tried} (at least {min_psnr_db:g} dB wanted)")
        return fraction

    def target_bytes(self) -> Optional[int]:
        """The size the file aims at in bytes: the user's, else the default rule's, else None."""
        explicit = target_bytes(self.config)
        return explicit if explicit is not None else self.default_target

    def _default_target_bytes(self, teacher: Gaussians) -> Optional[int]:
        """The default size rule's target for `teacher` when the user named no size and the
        preset follows the rule; None (fixed settings) for a teacher too small for the rule to
        leave room for the MLPs, where the rule would prune it to almost nothing."""
        cfg, device = self.config, str(self.device)
        if target_bytes(cfg) is not None or not cfg.preset_value("size_rule", device):
            return None
        target = default_target_bytes(len(teacher), attribute_count(teacher.sh_degree))
        if target < 2 * smallest_file_bytes(cfg, teacher, device):
            CONSOLE.log(f"default size rule: {target:,} B leaves this {len(teacher):,}-Gaussian teacher too little; "
                        f"fixed settings instead")
            return None
        CONSOLE.log(f"default size rule: {target:,} B ({8 * target / len(teacher):.1f} bits per teacher Gaussian; "
                    f"--target-size sets another)")
        return target

    def _cluster_count(self, n_gaussians: int) -> int:
        cfg, device = self.config, str(self.device)
        if not cfg.clustering:
            return 1
        return cluster_count(n_gaussians, cfg.preset_value("target_cluster_size", device), cfg.n_clusters,
                             cfg.preset_value("min_clusters", device))

    def _spend_large_target(self, target: int, n_teacher: int, fraction: float, n_attributes: int
                            ) -> Tuple[float, bool, int]:
        """Where the MLPs of the Gaussians kept at `fraction` could not spend `target`, in this
        order: (the pruning fraction, lowered from `fraction`; whether the MLPs' small-scene
        width cap is lifted, when even keeping every Gaussian leaves the target unspent; the
        fewest clusters, raised when even the uncapped MLPs leave it unspent, unless the
        clusters are set or off). Pruning gives way first: on a sparse scene it, not the MLPs,
        loses the decibels (docs/tuning.md, "How --target-size plans a file")."""
        cfg = self.config

        def capacity(n_kept: int, capped: bool = True, k: Optional[int] = None) -> float:
            k = k or self._cluster_count(n_kept)
            return plan_capacity(n_kept, k, self._planned_field_config(n_kept, k, n_attributes, capped), n_attributes)

        lowered = prune_fraction_to_spend(target, n_teacher, fraction, capacity)
        if lowered < fraction:
            n_kept = n_teacher - pruned_count(n_teacher, fraction)
            CONSOLE.log(f"target size {target:,} B: more than the MLPs of {n_kept:,} Gaussians can use; pruning "
                        f"{lowered:.0%} instead of {fraction:.0%}")
        uncapped = lowered == 0 and capacity(n_teacher) < SIZE_MARGIN * target
        if not uncapped:
            return lowered, False, 1
        CONSOLE.log(f"target size {target:,} B: more than the MLPs can use even without pruning; lifting "
                    f"their width cap (max_mlp_bits_per_gaussian)")
        k = self._cluster_count(n_teacher)
        if cfg.clustering and cfg.n_clusters is None:
            more = clusters_to_spend(target, n_teacher, k, lambda k: capacity(n_teacher, False, k))
            if more > k:
                CONSOLE.log(f"target size {target:,} B: {more} clusters instead of {k}, to spend it")
                k = more
        return lowered, True, k

    def _planned_field_config(self, n_gaussians: int, n_clusters: int, n_attributes: int, capped: bool = True
                              ) -> FieldPlan:
        """What `plan_for_size` needs of the MLPs the preset builds for this scene; `capped`: with
        the width cap of max_mlp_bits_per_gaussian."""
        cfg, device = self.config, str(self.device)
        field_cfg = cfg.field_config(device)
        width = field_cfg.width if cfg.field_width is not None or not capped else capped_mlp_width(
            field_cfg.width, n_gaussians, n_clusters, cfg.preset_value("max_mlp_bits_per_gaussian", device),
            field_cfg.n_frequencies, field_cfg.depth, n_attributes, field_cfg.weight_precision)
        return FieldPlan(field_cfg.n_frequencies, field_cfg.depth, field_cfg.weight_precision, width,
                         corrections=bool(cfg.preset_value("residual_attributes", device)))

    @torch.no_grad()
    def _init_residuals(self, targets: Tensor, budget_bytes: Optional[float], teacher: Gaussians, views) -> None:
        """The corrections of the configured attribute groups: what the fitted MLPs miss of
        `targets` [N, D] (the teacher's normalised attributes in the model's order). Their step:
        with `budget_bytes`, the finest that fits in it; else residual_step, or if that is
        unset the coarsest at which the scene renders within residual_psnr_db of `teacher`
        (the pruned teacher) on `views`."""
        cfg = self.config
        groups = attribute_groups(self.config.sh_degree)
        names = tuple(cfg.preset_value("residual_attributes", str(self.device)))
        unknown = [name for name in names if name not in groups and name != AUTO_RESIDUALS]
        if unknown:
            raise NeuralGSError(f"residual attributes {unknown} do not exist at SH degree {self.config.sh_degree} "
                                f"(known: {', '.join(groups)}, {AUTO_RESIDUALS})")
        step = cfg.preset_value("residual_step", str(self.device))
        if step is not None and not MIN_RESIDUAL_STEP <= step <= 2.0:
            raise NeuralGSError(f"residual step must be between {MIN_RESIDUAL_STEP} and 2, got {step}")
        predicted = self.field.decode(self.positions, self.labels)
        # Renders of the teacher, needed only to judge groups or steps by their renders.
        judged = AUTO_RESIDUALS in names or (names and budget_bytes is None and step is None)
        fidelity = self._fidelity(predicted, targets, teacher, views) if judged else None
        if AUTO_RESIDUALS in names:
            names = (self._best_correction_group(fidelity, predicted, targets, groups, budget_bytes, step),)
        columns = [c for name in groups if name in names for c in range(groups[name].start, groups[name].stop)]
        missed = targets[:, columns] - predicted[:, columns]
        if columns and budget_bytes is not None:
            step = residual_step_for_budget(missed, self.labels, budget_bytes, MIN_RESIDUAL_STEP)
        elif columns and step is None:
            step, measured = choose_residual_step(lambda s: fidelity(columns, s), cfg.residual_psnr_db)
            CONSOLE.log(f"correction step {step:.3g}: the stage C fit with them renders at {measured[step]:.1f} dB "
                        f"of the teacher on {len(views)} training views")
        step = float(step if step is not None else 1.0)
        self.residual_columns = torch.tensor(columns, dtype=torch.long, device=self.device)
        self.residual_steps = torch.full((len(columns),), step, device=self.device)
        self.residuals = torch.nn.Parameter(missed.contiguous())
        if columns:
            codes = residual_codes(missed, self.residual_steps)
            CONSOLE.log(f"residuals on {', '.join(n for n in groups if n in names)} ({len(columns)} columns, step "
                        f"{step:g}): {float((codes != 0).float().mean()):.0%} of the codes nonzero")

    def _best_correction_group(self, fidelity, predicted: Tensor, targets: Tensor, groups: Dict[str, slice],
                               budget_bytes: Optional[float], step: Optional[float]) -> str:
        """The group of AUTO_RESIDUAL_CANDIDATES whose corrections, at the step `budget_bytes`
        allows (else `step`, else exact), raise `fidelity` the most."""
        gains = {}
        for name in AUTO_RESIDUAL_CANDIDATES:
            columns = list(range(groups[name].start, groups[name].stop))
            trial = step if step is not None else MIN_RESIDUAL_STEP
            if budget_bytes is not None:
                missed = targets[:, columns] - predicted[:, columns]
                trial = residual_step_for_budget(missed, self.labels, budget_bytes, MIN_RESIDUAL_STEP)
            gains[name] = fidelity(columns, trial)
        best = max(gains, key=gains.get)
        baseline = fidelity([], 1.0)
        CONSOLE.log("corrections: the stage C fit renders at " + f"{baseline:.2f} dB; corrected " +
                    ", ".join(f"{name} {value - baseline:+.2f}" for name, value in gains.items()) + f" dB -> {best}")
        return best

    def _fidelity(self, predicted: Tensor, targets: Tensor, teacher: Gaussians, views):
        """fidelity(columns, step): mean PSNR over `views` of the stage C fit `predicted` [N, D],
        its `columns` corrected towards `targets` [N, D] at `step`, against the renders of
        `teacher` (the pruned teacher)."""
        from neuralgs_ns.compress.clustering import gaussians_from_attributes
        from neuralgs_ns.compress.pipeline_run import psnr

        white = torch.ones(1, 3, device=self.device)
        references = [teacher.render(vm[None], K[None], w, h, backgrounds=white)[0][0] for vm, K, w, h in views]
        table = NormalizationTable(self.attribute_mins, self.attribute_maxs)

        def fidelity(columns: List[int], step: float) -> float:
            steps = torch.full((len(columns),), step, device=self.device)
            corrected = predicted.clone()
            missed = targets[:, columns] - predicted[:, columns]
            corrected[:, columns] += dequantize_residuals(residual_codes(missed, steps), steps)
            g = gaussians_from_attributes(self.positions, table.denormalize(corrected), self.config.sh_degree)
            scores = [psnr(g.render(vm[None], K[None], w, h, backgrounds=white)[0][0], ref)
                      for (vm, K, w, h), ref in zip(views, references)]
            return sum(scores) / len(scores)

        return fidelity

    @torch.no_grad()
    def _arm_guard(self, datamanager) -> None:
        """Renders every training view with the stage C fit: the guard's reference losses."""
        cameras = datamanager.train_dataset.cameras
        losses, psnrs = [], []
        with progress_bar("stage C loss per training view", len(cameras)) as advance:
            for i in range(len(cameras)):
                batch = dict(datamanager.cached_train[i])
                batch["image"] = batch["image"].to(self.device)
                outputs = self.get_outputs(cameras[i : i + 1].to(self.device))
                losses.append(float(self.get_loss_dict(outputs, batch)["main_loss"]))
                psnrs.append(float(self.get_metrics_dict(outputs, batch)["psnr"]))
                advance()
        self.guard = FineTuneGuard(torch.tensor(losses))
        self._guard_snapshot = {**{f"field.{k}": v.detach().clone() for k, v in self.field.state_dict().items()},
                                "residuals": self.residuals.detach().clone()}
        CONSOLE.log(f"stage C fit: {sum(psnrs) / len(psnrs):.2f} dB on the training views")

    def guard_snapshot_cpu(self) -> Optional[Dict[str, Tensor]]:
        """The stage C weights the guard restarts from, on the CPU (to send to other ranks)."""
        return None if self._guard_snapshot is None else {k: v.cpu() for k, v in self._guard_snapshot.items()}

    def restore_guard_snapshot(self, snapshot: Optional[Dict[str, Tensor]]) -> None:
        self._guard_snapshot = None if snapshot is None else {k: v.to(self.device) for k, v in snapshot.items()}

    def _view(self, camera: Cameras):
        """(viewmat [4, 4], K [3, 3], width, height) of a one-camera `Cameras`."""
        viewmat = get_viewmat(camera.camera_to_worlds)[0]
        K = camera.get_intrinsics_matrices()[0].to(self.device)
        return viewmat, K, int(camera.width.item()), int(camera.height.item())

    @torch.no_grad()
    def _teacher_in_dataset_frame(self, teacher: Gaussians, views, datamanager) -> Gaussians:
        """The teacher, checked against a few training images; a .ply from the original
        capture frame is moved by the dataparser's transform when that fits better."""
        from neuralgs_ns.compress.pipeline_run import check_teacher_frame, frame_check_indices

        cfg = self.config
        idx = frame_check_indices(len(views), cfg.frame_check_views)
        white = torch.ones(3, device=self.device)
        targets = [self.composite_with_background(self.get_gt_img(datamanager.cached_train[i]["image"]), white)
                   for i in idx]
        outputs = datamanager.train_dataparser_outputs
        frame = check_teacher_frame(teacher, str(cfg.teacher).lower().endswith(".ply"), outputs.dataparser_transform,
                                    float(outputs.dataparser_scale), [views[i] for i in idx], targets,
                                    cfg.frame_check_margin_db)
        if not frame.fits:
            raise TeacherError(f"{cfg.teacher}: teacher does not match the dataset's frame (PSNR on {len(idx)} "
                               f"training views: {frame.summary}; need {cfg.frame_check_margin_db} dB over the "
                               f"empty render)")
        CONSOLE.log(f"teacher frame check on {len(idx)} training views: {frame.summary}")
        return teacher if frame.move is None else frame.move(teacher)

    # --- decoding ------------------------------------------------------------------------

    @property
    def is_compressed(self) -> bool:
        return self.field is not None

    def decode(self) -> Gaussians:
        """The Gaussians the MLPs currently describe. With gradients while training (every
        step needs them), else cached until the next optimiser step."""
        if self.field is None:
            raise NeuralGSError("this neuralgs model holds no compressed scene yet")
        if torch.is_grad_enabled() and self.training:
            return self._decode_now()
        if self._decoded_version != self._field_version:
            with torch.no_grad():
                self._decoded = self._decode_now()
            self._decoded_version = self._field_version
        return self._decoded

    def _decode_now(self) -> Gaussians:
        return decode_gaussians(self.field, self.positions, self.labels, self.attribute_mins, self.attribute_maxs,
                                self.config.sh_degree, self.residual_columns, self.stored_residuals())

    def stored_residuals(self) -> Tensor:
        """The corrections [N, C] at their stored steps (straight-through while training)."""
        return round_to_residual_steps(self.residuals, self.residual_steps)

    def normalized_attributes(self) -> Tensor:
        """[N, D] decoded attributes in the normalised space (what stage C fits)."""
        return decode_normalized(self.field, self.positions, self.labels, self.residual_columns,
                                 self.stored_residuals())

    def gaussian_params(self) -> Dict[str, Tensor]:
        g = self.decode()
        return {"means": g.means, "scales": g.scales, "quats": g.quats, "opacities": g.opacities,
                "features_dc": g.features_dc, "features_rest": g.features_rest}

    def sh_degree_to_use(self) -> Optional[int]:
        return self.config.sh_degree  # the teacher's full degree from the first step

    @property
    def means(self):
        return self.positions

    @property
    def colors(self):
        return self.decode().features_dc * SH_C0 + 0.5

    @property
    def shs_0(self):
        return self.decode().features_dc  # always SH here, also at degree 0

    @property
    def scales(self):
        return self.decode().scales

    @property
    def quats(self):
        return self.decode().quats

    @property
    def features_dc(self):
        return self.decode().features_dc

    @property
    def features_rest(self):
        return self.decode().features_rest

    @property
    def opacities(self):
        return self.decode().opacities

    # --- training (stage D) ------------------------------------------------------------------

    def get_param_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        groups = {"field": list(self.field.parameters()) if self.field is not None else []}
        if self.residuals.numel():
            groups["residuals"] = [self.residuals]
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    def trained_tensors(self) -> List[Tensor]:
        """What stage D trains and the file stores besides positions: the MLPs' weights and biases
        and the per-Gaussian corrections."""
        return [*self.field.parameters(), self.residuals]

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        def invalidate_cache(step: int) -> None:
            self._field_version += 1

        trainer = training_callback_attributes.trainer
        total = trainer.config.max_num_iterations if trainer is not None else 0
        if self.guard is not None and total > 0:
            self.guard.fit_to(total)

        def select_precision(step: int) -> None:
            # The last step always runs at the stored precision: what the checkpoint holds and
            # a reloaded model evaluates.
            int8_from = min(int(total * (1 - self.config.int8_fraction)), total - 1)
            if self.field is not None and self.field.int8_active != (step >= int8_from):
                self.field.int8_active = step >= int8_from
                self._field_version += 1

        def last_step() -> int:
            return (trainer._start_step if trainer is not None else 0) + total - 1

        self._average = TrailingMean(self.config.preset_value("average_fraction", str(self.device)), total)

        def average(step: int) -> None:
            if self.field is not None:
                self._average.update(step, last_step(), self.trained_tensors())

        def finish(step: int) -> None:
            # After the last step, before the trainer's final checkpoint: the checkpoint and
            # the file then hold the same scene.
            if step == last_step() and self.field is not None:
                if self._average.mean is not None:
                    with torch.no_grad():
                        for mean, p in zip(self._average.mean, self.trained_tensors()):
                            p.copy_(mean)
                    CONSOLE.log(f"stage D: the MLPs and corrections averaged over the last {self._average.count} steps")
                    self._average.mean = None
                self.fit_to_target_size()
                self._field_version += 1
                if trainer is not None and is_main_process():
                    from neuralgs_ns.codec import CompressedScene

                    size = CompressedScene.from_model(self).save(trainer.base_dir / COMPRESSED_FILE_NAME)
                    CONSOLE.log(f"wrote {trainer.base_dir / COMPRESSED_FILE_NAME} ({size:,} bytes)")

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], select_precision),
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.step_cb,
                             args=[training_callback_attributes.optimizers]),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._guard_step,
                             args=[training_callback_attributes.optimizers]),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], invalidate_cache),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], average),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], finish),
        ]

    @torch.no_grad()
    def fit_to_target_size(self) -> None:
        """With a target size: drops the corrections that matter least (by importance and
        size) until the file fits, when fine-tuning moved their entropy past the plan's margin."""
        from neuralgs_ns.codec import CompressedScene
        from neuralgs_ns.compress.rate import corrections_to_drop

        target = self.target_bytes()
        if target is None:
            return
        size, dropped = len(CompressedScene.from_model(self).to_bytes()), 0
        while size > target and self.residuals.numel():
            codes = residual_codes(self.residuals, self.residual_steps)
            drop = corrections_to_drop(codes, self.residual_steps, self.importance, 8 * (size - target))
            if not bool(drop.any()):
                break
            self.residuals.data[drop] = 0.0
            dropped += int(drop.sum())
            size = len(CompressedScene.from_model(self).to_bytes())
        if dropped:
            CONSOLE.log(f"target size {target:,} B: dropped {dropped:,} of the corrections to fit ({size:,} B)")
        if size > target:
            CONSOLE.log(f"[bold yellow]target size {target:,} B: the file takes {size:,} B")
        elif size < TARGET_SIZE_FLOOR * target:
            # The plan caps the MLPs' width and the corrections' step: a small scene at a large
            # target runs out of uses even when every Gaussian is kept.
            advice = ("prune less to spend more (--prune-fraction; --pipeline.model.prune-fraction in ns-train)"
                      if self.n_pruned != 0 else "no Gaussian was pruned and the MLPs are at their widest")
            CONSOLE.log(f"[bold yellow]target size {target:,} B: the file takes only {size:,} B "
                        f"({size / target:.0%}), all the plan could use for {len(self.positions):,} Gaussians; "
                        f"{advice}")

    def _guard_step(self, optimizers, step: int) -> None:
        """After an optimiser step: feeds its loss to the guard, and when the guard says so
        puts the stage C weights back and continues at a smaller learning rate."""
        if self.guard is None or self._last_step_loss is None or optimizers is None:
            return
        view, loss = self._last_step_loss
        self._last_step_loss = None
        ratio = loss / float(self.guard.view_losses[view])
        if self.guard.watching and math.isfinite(ratio) and ratio > 2 * self.guard.blowup_limit:
            CONSOLE.log(f"stage D step {step}: training view {view} at {ratio:.1f}x its stage C loss "
                        f"(the guard acts on the median of {self.guard.span} steps)", style="dim")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Data parallel: every rank's guard sees the mean over the ranks' views, so all
            # of them restart (or not) together and their weights stay identical.
            mean = torch.tensor([ratio], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(mean)
            ratio = float(mean) / torch.distributed.get_world_size()
        if not self.guard.update_ratio(ratio):
            if not self.guard.watching:
                self.guard, self._guard_snapshot = None, None  # done: free the snapshot
            return
        snapshot = self._guard_snapshot
        self.field.load_state_dict({k[len("field."):]: v for k, v in snapshot.items() if k.startswith("field.")})
        self.residuals.data.copy_(snapshot["residuals"])
        if "residuals" in optimizers.optimizers:
            optimizers.optimizers["residuals"].state.clear()
        optimizer = optimizers.optimizers["field"]
        optimizer.state.clear()  # Adam's moments belong to the abandoned trajectory
        for group in optimizer.param_groups:
            group["lr"] *= self.guard.backoff
        scheduler = optimizers.schedulers.get("field")
        if scheduler is not None:  # the schedule continues, scaled
            scheduler.base_lrs = [lr * self.guard.backoff for lr in scheduler.base_lrs]
        CONSOLE.log(f"stage D step {step}: {self.guard.last_trigger_reason}; restarting from the stage C fit at "
                    f"learning rate {optimizer.param_groups[0]['lr']:.1e}")

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        terms = photometric_loss(outputs["rgb"], gt, self.config.loss)
        loss_dict = {"main_loss": terms["total"]}
        if self.training:
            self.camera_optimizer.get_loss_dict(loss_dict)
            if self.guard is not None and torch.is_grad_enabled():
                self._last_step_loss = (int(batch["image_idx"]), terms["total"].item())
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        metrics = {"psnr": self.psnr(outputs["rgb"].detach(), gt), "gaussian_count": self.positions.shape[0]}
        self.camera_optimizer.get_metrics_dict(metrics)
        return metrics

    # --- checkpoints ---------------------------------------------------------------------

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore
        """Rebuilds the MLPs and buffers at the checkpoint's sizes (unless they match), then loads them."""
        field_state = {k[len("field."):]: v for k, v in state_dict.items() if k.startswith("field.")}
        same_sizes = self.field is not None and all(
            name in field_state and field_state[name].shape == t.shape for name, t in self.field.state_dict().items())
        if field_state and not same_sizes:
            self.field = field_from_state_dict(field_state, self.config.field_activation,
                                               self.config.field_precision).to(self.device)
        # else: loaded in place below, keeping the Parameters an optimiser may already hold
        for name in ("positions", "labels", "position_grid", "attribute_mins", "attribute_maxs"):
            setattr(self, name, state_dict[name].to(self.device).clone())
        for name in ("residual_columns", "residual_steps", "importance"):  # absent from older checkpoints
            if name in state_dict:
                setattr(self, name, state_dict[name].to(self.device).clone())
        residuals = state_dict.get("residuals", torch.zeros(self.positions.shape[0], 0))
        if residuals.shape != self.residuals.shape:
            self.residuals = torch.nn.Parameter(torch.zeros_like(residuals, device=self.device))
        state_dict = {**state_dict, "residuals": residuals, "residual_columns": self.residual_columns,
                      "residual_steps": self.residual_steps, "importance": self.importance}
        n_rest = (state_dict["attribute_mins"].shape[0] - 11) // 3
        self.config.sh_degree = int(round((n_rest + 1) ** 0.5)) - 1
        self._field_version += 1
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("lpips.")}
        torch.nn.Module.load_state_dict(self, state_dict, **kwargs)
