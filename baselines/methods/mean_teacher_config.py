"""The mean teacher's typed settings (DeepNoise's values by default; the method is in
``mean_teacher.py``, its value checks in ``mean_teacher._check``).

Torch-free, so ``cytodata train --show`` and ``load_config`` read a mean-teacher config without
loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import TrainConfig
from ..registry import CONFIGS


@CONFIGS.register("mean-teacher")
@dataclass
class MeanTeacherConfig(TrainConfig):
    """Mean-teacher settings on top of the engine's (defaults: DeepNoise's values)."""

    members: list[str] = field(default_factory=list)  # timm names (empty: [model]); 2 = ensemble
    head: str = "arcface"             # arcface | softmax
    arcface_s: float = 30.0
    arcface_m: float = 0.1
    easy_margin: bool = False
    mean_teacher: bool = True         # false: students only (no teacher losses; the ablation)
    ema_decay: float = 0.999          # teacher = decay * teacher + (1 - decay) * student
    consistency: float = 10.0         # max weight of the softmax-MSE consistency loss
    consistency_rampup: float = 0.3   # fraction of the run over which weights ramp up (sigmoid)
    pseudo_label: float = 1.0         # weight of the soft pseudo-label loss on unlabelled images
    pseudo_threshold: float = 0.0     # only images whose averaged teacher max prob >= this
    predict_with: str = "student"     # student | teacher: the ensemble of predict/embed/validate
    predict_tta: int = 1              # cytodata predict's default --tta (1, 2, 4 or 8 views)
    # DeepNoise's stage 2 (configs deepnoise-stage2*); epochs count labelled-set epochs
    ema_schedule: list[list[float]] = field(default_factory=list)  # [[epoch, decay], ...]
    rampup_epochs: float | None = None  # ramp-up length in epochs (None: consistency_rampup)
    epoch_steps: int | None = None    # steps per epoch of the epoch-based schedules (None: the
    #                                   labelled rows / global batch)
    init_from: str | None = None      # stage-1 run: students and teachers start from its students
    requires_init: bool = False       # refuse to train without init_from (a second stage)
    init_skip_head: bool = False      # the students' heads are not loaded (fresh), teachers' are
    pseudo_mode: str = "soft"         # soft: every step, soft, unbalanced | deepnoise
    pseudo_first_epoch: float = 0.0   # deepnoise: first labels after this many epochs
    pseudo_warmup_epochs: float = 0.0  # deepnoise: pseudo-label weight 0 before (then the
    #                                    supervised loss is scaled by 1 - pseudo_label)
    pseudo_views: int = 4             # deepnoise: teacher views averaged per label update
    pseudo_smoothing: float = 0.9     # deepnoise: share of the new logits in later updates
    pseudo_balance_iterations: int = 500
    unlabelled_ratio: float = 1.0     # data.unlabelled images per labelled image per micro-batch
    erasing: float = 0.25             # probability of random erasing per image
    erasing_area: list[float] = field(default_factory=lambda: [0.02, 0.25])  # of the image
    # DeepNoise's per-image shift/scale/aspect (shift_scale_aspect): probability and +- ranges
    ssr_p: float = 0.0
    ssr_shift: float = 0.1
    ssr_scale: float = 0.1
    ssr_aspect: float = 0.1
    views: str = "shared"             # shared: one student view for every loss, one teacher
    #                                   view | deepnoise: the supervised loss on a 'normal' view
    #                                   (erasing), consistency and pseudo-labels on an 'easy' one
    #                                   (no erasing), the teacher on a 'hard' one (normal + a
    #                                   random crop of hard_crop of the side, resized back)
    hard_crop: list[float] = field(default_factory=lambda: [0.8, 0.99])  # drawn per image
    intensity_per: str = "view"       # view: the intensity jitter drawn anew for every view |
    #                                   image: drawn once per image before the views' geometry
    #                                   and shared by all of them (DeepNoise's plate mean/std
    #                                   jitter at normalisation, process/data.py:102-109)
    student_passes: int = 1           # views: deepnoise: 1 = the 'normal' and 'easy' views in
    #                                   one student forward pass (shared BatchNorm batch
    #                                   statistics) | 2 = one pass each (DeepNoise main.py:641-642)
    val_site: int | None = None       # validate on the rows of this ``site`` only (DeepNoise: 1,
    #                                   process/data.py:21, main.py:155-160); None: every row
    scale: list[float] = field(default_factory=lambda: [0.8, 1.25])  # random scale range
    drop_rate: float = 0.0
