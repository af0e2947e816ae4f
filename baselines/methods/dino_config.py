"""DINO / WS-DINO settings: typed configs validated on load (the methods are in ``dino/``).

Torch-free and outside the ``dino`` package (whose import loads the models), so
``cytodata train --show`` and ``load_config`` read a DINO config without loading torch;
``dino/config.py`` re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cytodata.errors import RecipeError

from ..config import TrainConfig
from ..registry import CONFIGS


@dataclass
class PhotometricConfig:
    """DINO's per-view photometric ops (``photometric.py``); every probability 0: none.

    Per view kind, ``[global view 1, global view 2, local views]`` (DINO's three pipelines).
    """

    jitter_p: float = 0.0             # colour jitter's probability per view (DINO 0.8)
    brightness: float = 0.0           # gain U(1 - b, 1 + b), one per view (DINO 0.4)
    contrast: float = 0.0             # about each channel's mean, U(1 - c, 1 + c) (DINO 0.4)
    blur_p: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])   # DINO [1, 0.1, 0.5]
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])    # std in px (DINO)
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # DINO [0, 0.2, 0]

    def check(self, where: str) -> None:
        """Each value in range, else a :class:`RecipeError` naming the key and the fix."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise RecipeError(f"{where}: photometric.{msg}")

        need(0 <= self.jitter_p <= 1, f"jitter_p={self.jitter_p}; a probability in [0, 1] (DINO 0.8)")
        need(self.brightness >= 0 and self.contrast >= 0,
             f"brightness={self.brightness}, contrast={self.contrast}; both >= 0 (DINO 0.4)")
        for name in ("blur_p", "solarize_p"):
            ps = getattr(self, name)
            need(len(ps) == 3 and all(0 <= q <= 1 for q in ps),
                 f"{name}={ps}; expected three probabilities [global view 1, global view 2, "
                 "local views] in [0, 1] (DINO blur_p [1.0, 0.1, 0.5], solarize_p [0, 0.2, 0])")
        need(len(self.blur_sigma) == 2 and 0 < self.blur_sigma[0] <= self.blur_sigma[1],
             f"blur_sigma={self.blur_sigma}; expected [min, max] std in px with 0 < min <= max "
             "(DINO [0.1, 2.0])")


@CONFIGS.register("dino")
@dataclass
class DinoConfig(TrainConfig):
    """DINO settings on top of the engine's (``data.crop`` is the global crop side)."""

    out_dim: int = 65536              # prototypes K (DINO 65536)
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True      # weight-norm gain fixed at 1 (DINO's default for ViT-S)
    freeze_last_layer: float = 1.0    # epochs with the last head layer frozen
    patch_size: int | None = None     # override the timm model's patch size (e.g. test_vit -> 8)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # more timm kwargs (depth, ...)
    drop_path_rate: float = 0.1       # student only; the teacher has none
    per_channel: bool = False         # one model per channel, in_chans=1 (WS-DINO's choice)
    student_temp: float = 0.1
    teacher_temp: float = 0.04        # after warm-up
    warmup_teacher_temp: float = 0.04  # start of the linear warm-up
    warmup_teacher_temp_epochs: float = 0.0
    center_momentum: float = 0.9      # 1.0 = no centring
    momentum_teacher: float = 0.99    # WS-DINO 0.99; DINO 0.996; cosine to 1
    local_crops: int = 8
    local_crop: int = 96
    # area fractions [min, max] of the (prescaled) image per view; null: derived from the image
    # size so views keep cells at the resolution embed sees them at (native resolution)
    global_scale: list[float] | None = None
    local_scale: list[float] | None = None
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # aspect ratios
    view_interpolation: str = "bilinear"  # bilinear | bicubic (resampling of the views)
    vertical_flip: bool = True        # with augment.flips: flip vertically too (DINO: horizontal only)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)  # DINO's colour ops
    prescale: float = 1.0             # resize whole images by this factor before views and embed
    intensity_clip: float | None = None  # raw intensity clipped at this value, then / it (0..1);
    #                                      needs data.normalize: none (WS-DINO: 10000)
    warmup_epochs: float | None = None  # lr warm-up in epochs (overrides optim.warmup_steps)
    embed_crop: int | None = None     # side of the four centre crops (default data.crop)
    # embed's crop boxes [x_min, y_min, x_max, y_max] in pixels of the prescaled field (the
    # feature-wise median over them); null: four centre crops of embed_crop
    embed_boxes: list[list[int]] | None = None
    collapse_patience: int = 50       # consecutive collapsed steps before the warning

    def __post_init__(self):
        where = f"{self.method} config"

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise RecipeError(f"{where}: {msg}")

        need(self.out_dim >= 2, f"out_dim={self.out_dim}; the DINO head needs >= 2 prototypes "
             "(DINO uses 65536; tiny runs 256)")
        need(self.head_hidden_dim >= 1 and self.head_bottleneck_dim >= 1 and self.head_layers >= 1,
             f"head_hidden_dim={self.head_hidden_dim}, head_bottleneck_dim="
             f"{self.head_bottleneck_dim}, head_layers={self.head_layers}; all must be >= 1")
        need(self.local_crops >= 0, f"local_crops={self.local_crops}; must be >= 0 (DINO: 8)")
        need(self.local_crop >= 8, f"local_crop={self.local_crop}; must be >= 8 pixels")
        for name in ("global_scale", "local_scale"):
            lo_hi = getattr(self, name)
            need(lo_hi is None or (len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 1),
                 f"{name}={lo_hi}; expected [min, max] area fractions with 0 < min <= max <= 1, "
                 "or null for native-resolution views derived from the image size")
        need(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1],
             f"crop_ratio={self.crop_ratio}; expected [min, max] aspect ratios > 0 (DINO: "
             "[0.75, 1.333]; WS-DINO: [1, 1])")
        need(self.view_interpolation in ("bilinear", "bicubic"),
             f"view_interpolation={self.view_interpolation!r}; valid: bilinear, bicubic")
        need(0 < self.prescale <= 1, f"prescale={self.prescale}; must be in (0, 1] (WS-DINO "
             "halves BBBC021 fields: 0.5)")
        need(self.intensity_clip is None or self.intensity_clip > 0,
             f"intensity_clip={self.intensity_clip}; must be > 0 (raw intensity units)")
        need(self.intensity_clip is None or self.data.normalize == "none",
             f"intensity_clip={self.intensity_clip} scales raw intensities, but data.normalize="
             f"{self.data.normalize!r} normalises them first; set --set data.normalize=none, or "
             "--set intensity_clip=null to keep the normalisation")
        need(self.student_temp > 0 and self.teacher_temp > 0 and self.warmup_teacher_temp > 0,
             "student_temp, teacher_temp and warmup_teacher_temp must be > 0")
        need(0.0 <= self.center_momentum <= 1.0,
             f"center_momentum={self.center_momentum}; must be in [0, 1]")
        need(0.0 <= self.momentum_teacher <= 1.0,
             f"momentum_teacher={self.momentum_teacher}; must be in [0, 1]")
        need(self.patch_size is None or self.patch_size >= 1, f"patch_size={self.patch_size}")
        for box in self.embed_boxes or []:
            need(len(box) == 4 and 0 <= box[0] < box[2] and 0 <= box[1] < box[3],
                 f"embed_boxes: {box}; expected [x_min, y_min, x_max, y_max] pixels with "
                 "0 <= x_min < x_max and 0 <= y_min < y_max (WS-DINO: [64, 32, 320, 256], ...)")
        need(self.collapse_patience >= 1, f"collapse_patience={self.collapse_patience}; >= 1")
        self.photometric.check(where)


PAIR_SAMPLING = ("balanced", "weighted")


@CONFIGS.register("ws-dino")
@dataclass
class WSDinoConfig(DinoConfig):
    """WS-DINO: local crops from a partner image sharing ``weak_label``."""

    weak_label: str = "label"         # index column(s); "compound+concentration" = treatment
    pair_image_column: str = "auto"   # what makes two rows the same image (auto: parent_id/key)
    # balanced: groups evenly, without replacement, partner another image (ours); weighted: the
    # authors' inverse-frequency draw with replacement, partner any row of the group (itself too)
    pair_sampling: str = "balanced"

    def __post_init__(self):
        super().__post_init__()
        if self.pair_sampling not in PAIR_SAMPLING:
            raise RecipeError(f"{self.method} config: pair_sampling={self.pair_sampling!r}; valid: "
                              f"{', '.join(PAIR_SAMPLING)}")
