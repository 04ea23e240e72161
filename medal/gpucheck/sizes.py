"""What the check runs at: the paper's sizes on a GPU (`FULL`), toy sizes through the same code on a CPU (`TINY`).

Full sizes are the issue's: Xception / Inception at 299 px, the committee of three 192-map FC-DenseNets at
256 px, the GAN generator at 512 px, a pipeline on a few hundred phantoms. The check stops starting rows after
`total_s` (7 min 40 s), so with the interpreter's start it ends inside eight minutes; the boxes add up to about
that, the pipeline's (~2 min) and torch.compile's (~2 min, last) being the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

#: one RSNA training epoch in 10 s (12,611 images): 18x the paper's 3 minutes on 8 V100s
TRAIN_GOAL_IMG_S = 1260.0
#: the whole RSNA training set scored by the committee in 30 s
POOL_IMAGES, POOL_GOAL_S = 12_611, 30.0


@dataclass(frozen=True)
class Sizes:
    """Every size and time box of one mode (seconds are per row)."""

    mode: str
    phantoms: int  # images of the throughput phantom set
    phantom_size: int  # their side in px (the cache resizes them to the model's input)
    backbones: tuple[str, ...]  # conf/model/ names; the first is the headline (Xception)
    image_size: int | None  # None: each model's own (299)
    batch_sizes: tuple[int, ...]  # tried in order while they fit and get faster
    train_box: float  # per backbone, DataModule-fed training
    search_box: float  # per backbone, batch-size search
    compile_box: float  # the torch.compile variant of the headline backbone (compilation included)
    compile_backend: str  # inductor (generated kernels); tiny: aot_eager (the same graph capture, no codegen)
    warmup_steps: int
    loader_batches: int
    matmul_n: int  # side of the square matrices of the peak-rate matmul
    segment_size: int  # committee working size (paper 256)
    segment_overrides: tuple[str, ...]  # of conf/segment.yaml (none: the paper's 192-map net and schedule)
    pool_images: int  # images scored to measure the pool rate
    round_box: float
    score_box: float
    gan_size: int  # generator input side (512)
    gan_overrides: tuple[str, ...]
    gan_box: float
    pipeline_phantoms: int
    pipeline_phantom_size: int
    pipeline_box: float
    pipeline_stages: dict[str, tuple[str, ...]]
    total_s: float


FULL = Sizes(
    mode="full", phantoms=512, phantom_size=512, backbones=("xception", "inception_v3", "inception_resnet_v2"),
    image_size=None, batch_sizes=(64, 128, 256, 512), train_box=15.0, search_box=12.0, compile_box=120.0,
    compile_backend="inductor", warmup_steps=5, loader_batches=40, matmul_n=8192, segment_size=256,
    segment_overrides=(), pool_images=2048, round_box=20.0, score_box=20.0, gan_size=512, gan_overrides=(),
    gan_box=15.0, pipeline_phantoms=256, pipeline_phantom_size=512, pipeline_box=150.0,
    pipeline_stages={
        "segment": ("segment.steps_per_round=40", "al.initial=32", "al.per_round=32", "al.budget=64",
                    "al.val_limit=32", "al.score_batch_size=64"),
        "enhance": ("enhance.epochs=2",),
        "boneage": ("model=xception", "trainer.max_epochs=5", "finetune.max_epochs_per_stage=1",
                    "data.batch_size=64", "evaluation.bootstrap=200"),
        "cam": (),
    },
    total_s=460.0,
)

TINY = Sizes(
    mode="tiny", phantoms=48, phantom_size=96, backbones=("tiny",), image_size=80,
    batch_sizes=(2, 4), train_box=12.0, search_box=10.0, compile_box=60.0, compile_backend="aot_eager",
    warmup_steps=1, loader_batches=6, matmul_n=256, segment_size=64,
    segment_overrides=("segment.net.first_conv=8", "segment.net.growth=4", "segment.net.down_layers=[1,1,1]",
                       "segment.net.bottleneck_layers=2", "segment.steps_per_round=6"),
    pool_images=32, round_box=10.0, score_box=10.0, gan_size=64,
    gan_overrides=("enhance.generator.depth=2", "enhance.generator.width=8", "enhance.discriminator.width=8"),
    gan_box=10.0, pipeline_phantoms=48, pipeline_phantom_size=96, pipeline_box=240.0,
    pipeline_stages={
        "segment": ("segment.image_size=64", "segment.steps_per_round=10", "segment.batch_size=4",
                    "segment.net.first_conv=8", "segment.net.growth=4", "segment.net.down_layers=[1,1,1]",
                    "segment.net.bottleneck_layers=2", "segment.roi.size=64", "al.initial=8", "al.per_round=8",
                    "al.budget=16", "al.committee_size=2", "al.val_limit=8"),
        "enhance": ("enhance.image_size=64", "enhance.epochs=1", "enhance.generator.depth=2",
                    "enhance.generator.width=8", "enhance.discriminator.width=8", "enhance.batch_size=8"),
        "boneage": ("model=tiny", "data.image_size=64", "trainer.max_epochs=5", "finetune.max_epochs_per_stage=1",
                    "evaluation.bootstrap=50"),
        "cam": ("cam.max_overlays=4",),
    },
    total_s=900.0,
)
