"""Write a phantom data set in the official RSNA layout, in parallel, deterministically and resumably.

Every image's randomness comes from `SeedSequence([seed, index])`, so an image depends only on
(seed, index, settings), never on the number of workers or on which images were already on disk.
Image files are written atomically; a rerun with the same settings skips every finished image. The
settings are the parts of the folder's `medal.resume.Marker` (`<out>/.medal/phantoms.json`, policy refuse):
a different request cannot mix into the folder, and nothing in it is deleted.

Beside each raw image the set holds, under the same `<id>.png`: `masks/` (the hand), `gold/` (the
enhancer's target) and `bones/` (a label map of the rendered bones: `BONE_CLASSES`, stored as grey levels
`class * 85` so the file is viewable; `read_bones` decodes it). `phantoms.csv` records per image what was
drawn, including the facts behind the noise floor (`anatomical_age`, `anatomy_plateau`, `floor_prediction`,
see `floor.py`); none of it is ever a model input.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medal.data.images import read_image, write_png
from medal.data.phantom.acquisition import Acquisition, Nuisance, acquire, sample_acquisition
from medal.data.phantom.anatomy import Individual, sample_boneage
from medal.data.phantom.floor import FLOOR_COLUMN, SIDECAR, floor_predictions
from medal.data.phantom.hand import HandShape, build_hand
from medal.data.phantom.render import BONE_CLASSES, Layers, gold_image, render_layers
from medal.errors import MedalError
from medal.resume import Marker

log = logging.getLogger("medal.phantoms")

GENERATOR_VERSION = 1  # bump when images change for the same settings, so old folders are not reused
MARKER = "phantoms"  # <out>/.medal/phantoms.json: the settings, and whether every image was written
SPLIT_DIRS = {
    "train": ("boneage-training-dataset",),
    "val": ("boneage-validation-dataset-1", "boneage-validation-dataset-2"),
    "test": ("Test Set Images",),
}
FIRST_ID = 1000
BONES_DIR = "bones"  # <out>/bones/<id>.png: the bone label map, aligned with the raw image
BONE_LEVEL_STEP = 85  # grey level of class k is k * 85 (0, 85, 170, 255)


@dataclass(frozen=True)
class PhantomSettings:
    """Everything that determines the images; recorded in the folder's marker (`.medal/phantoms.json`)."""

    n: int
    seed: int
    image_size: int = 512
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    age_range: tuple[float, float] = (1.0, 228.0)
    male_fraction: float = 0.54
    maturity_sd: float = 4.0  # months: how far anatomy as a whole strays from the label
    timing_sd: float = 0.07  # relative spread of each centre's timing
    nuisance: Nuisance = field(default_factory=Nuisance)

    def validate(self) -> None:
        checks = [
            (self.n >= 1, "n", "must be a positive number of images"),
            (self.image_size >= 32, "image_size", "must be at least 32 pixels"),
            (
                len(self.splits) == 3 and min(self.splits) >= 0 and abs(sum(self.splits) - 1) < 1e-6,
                "splits",
                "train/val/test fractions must be >= 0 and sum to 1",
            ),
            (
                0 < self.age_range[0] < self.age_range[1] <= 240,
                "age_range",
                "needs 0 < min < max <= 240 months",
            ),
            (0 <= self.male_fraction <= 1, "male_fraction", "must lie in [0, 1]"),
            (self.maturity_sd >= 0 and self.timing_sd >= 0, "maturity_sd/timing_sd", "must be >= 0"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise MedalError(f"phantoms.{key}={getattr(self, key, '?')}: {why}")
        self.nuisance.validate()

    def to_json(self) -> dict:
        return {"version": GENERATOR_VERSION, **json.loads(json.dumps(asdict(self)))}


@dataclass(frozen=True)
class ImageSpec:
    """One phantom radiograph, fully determined: who, at which bone age, and how it was acquired."""

    index: int
    id: str
    split: str
    folder: str
    boneage: float
    individual: Individual
    shape: HandShape
    acquisition: Acquisition


def assign_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> list[tuple[str, str]]:
    """(split, folder) of every index: a seeded shuffle cut by the fractions; val alternates folders."""
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    order = np.random.default_rng([seed, 0x5A17]).permutation(n)
    labels = np.array(["train"] * n, dtype=object)
    labels[order[:n_val]] = "val"
    labels[order[n_val : n_val + n_test]] = "test"
    out, val_seen = [], 0
    for split in labels:
        dirs = SPLIT_DIRS[split]
        if split == "val":
            out.append((split, dirs[val_seen % 2]))
            val_seen += 1
        else:
            out.append((split, dirs[0]))
    return out


def sample_spec(settings: PhantomSettings, index: int, split: str, folder: str) -> ImageSpec:
    """Draw image `index` of the data set; the same arguments always give the same spec."""
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, index]))
    male = bool(rng.random() < settings.male_fraction)
    boneage = sample_boneage(rng, male, settings.age_range)
    # Official layouts: whole months for train/val, decimals for the test ground truth.
    boneage = round(boneage, 2) if split == "test" else float(np.clip(round(boneage), *settings.age_range))
    individual = Individual.sample(rng, male, offset_sd=settings.maturity_sd, timing_sd=settings.timing_sd)
    shape = HandShape.sample(rng)
    acq = sample_acquisition(rng, settings.image_size, settings.nuisance)
    return ImageSpec(index, str(FIRST_ID + index), split, folder, boneage, individual, shape, acq)


def render_spec_layers(spec: ImageSpec, seed: int) -> tuple[np.ndarray, Layers]:
    """The raw image (float in [0, 1]) of one spec and the clean layers it was acquired from."""
    acq = spec.acquisition
    geo = build_hand(spec.individual, spec.boneage, spec.shape)
    texture = np.random.default_rng(np.random.SeedSequence([seed, spec.index, 2]))
    layers = render_layers(geo, acq.pose, acq.height, acq.width, texture=texture)
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, spec.index, 1]))
    return acquire(layers, acq, noise_rng), layers


def render_spec(spec: ImageSpec, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw, mask, gold) of one spec: raw float in [0, 1], mask bool, gold float in [0, 1]."""
    raw, layers = render_spec_layers(spec, seed)
    return raw, layers.mask, gold_image(layers)


def encode_bones(labels: np.ndarray) -> np.ndarray:
    """A bone label map (uint8 classes) as the [0, 1] grey image `write_png` stores (class k -> k * 85)."""
    return labels.astype(np.float32) * (BONE_LEVEL_STEP / 255.0)


def read_bones(path: str | Path) -> np.ndarray:
    """The uint8 bone label map (`BONE_CLASSES` values, 0 = no bone) of a `bones/<id>.png` file.

    Examples:
        >>> import tempfile
        >>> labels = np.array([[0, 1], [2, 3]], np.uint8)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_png(Path(tmp) / "b.png", encode_bones(labels))
        ...     read_bones(Path(tmp) / "b.png").tolist()
        [[0, 1], [2, 3]]
    """
    labels = np.rint(read_image(path) * (255.0 / BONE_LEVEL_STEP)).astype(np.uint8)
    if labels.max(initial=0) > max(BONE_CLASSES.values()):
        raise MedalError(f"{path}: not a bone label map (grey levels must be multiples of {BONE_LEVEL_STEP})")
    return labels


def _paths(out_dir: Path, spec: ImageSpec) -> dict[str, Path]:
    """Every file of one image; the raw image is written last, so its presence marks the image done."""
    name = f"{spec.id}.png"
    return {"gold": out_dir / "gold" / name, "mask": out_dir / "masks" / name,
            "bones": out_dir / BONES_DIR / name, "raw": out_dir / spec.folder / name}


def _make_image(job: tuple[Path, PhantomSettings, int, str, str]) -> tuple[dict, bool]:
    """Render and write the files of one image that are missing; return its metadata row and whether made.

    A set made before `bones/` existed gains its bone maps on a rerun; the files it has are not rewritten.
    """
    out_dir, settings, index, split, folder = job
    spec = sample_spec(settings, index, split, folder)
    paths = _paths(out_dir, spec)
    missing = [kind for kind, path in paths.items() if not path.exists()]
    if missing:
        raw, layers = render_spec_layers(spec, settings.seed)
        images = {"gold": (gold_image(layers), 8), "mask": (layers.mask, 8),
                  "bones": (encode_bones(layers.bones), 8), "raw": (raw, spec.acquisition.bits)}
        for kind in missing:  # in `_paths` order: the raw image last
            image, bits = images[kind]
            write_png(paths[kind], image, bits=bits, compress_level=1)
    acq = spec.acquisition
    individual = spec.individual
    row = {
        "id": spec.id,
        "split": split,
        "boneage": spec.boneage,
        "male": spec.individual.male,
        "inverted": acq.inverted,
        "bits": acq.bits,
        "height": acq.height,
        "width": acq.width,
        "maturity_offset": round(individual.maturity_offset, 3),
        "anatomical_age": round(spec.boneage + individual.maturity_offset, 3),
        "anatomy_plateau": round(individual.plateau(), 3),
        "hard": "+".join(acq.hard),  # empty for an ordinary acquisition (Nuisance.hard_p)
        "path": f"{folder}/{spec.id}.png",
    }
    return row, bool(missing)


def _begin_folder(out_dir: Path, settings: PhantomSettings) -> Marker:
    """The folder's marker, begun: refuses another request's folder and any folder that is not a phantom set."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MedalError(f"{out_dir}: is a file, not a folder; pick another out=")
    marker = Marker.in_folder(out_dir, MARKER, policy="refuse", what="phantoms")
    if marker.read() is None and out_dir.exists() and any(out_dir.iterdir()):
        raise MedalError(
            f"{out_dir}: folder is not empty and not a phantom data set; pick another out= or delete it"
        )
    marker.begin(settings.to_json())  # other settings: one line naming the first that differs
    return marker


def _write_labels(out_dir: Path, meta: pd.DataFrame) -> None:
    """The official label files of the three splits, plus `phantoms.csv` with everything drawn."""

    def atomic(path: Path, write) -> None:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        write(tmp)
        tmp.replace(path)

    train = meta[meta.split == "train"]
    val = meta[meta.split == "val"]
    test = meta[meta.split == "test"]
    atomic(
        out_dir / "train.csv",
        lambda p: pd.DataFrame(
            {"id": train.id.astype(int), "boneage": train.boneage.round().astype(int), "male": train.male}
        ).to_csv(p, index=False),
    )
    atomic(
        out_dir / "Validation Dataset.csv",
        lambda p: pd.DataFrame(
            {
                "Image ID": val.id.astype(int),
                "male": val.male,
                "Bone Age (months)": val.boneage.round().astype(int),
            }
        ).to_csv(p, index=False),
    )
    atomic(
        out_dir / "Bone age ground truth.xlsx",
        lambda p: pd.DataFrame(
            {
                "Case ID": test.id.astype(int),
                "Sex": np.where(test.male, "M", "F"),
                "Ground truth bone age (months)": test.boneage.astype(float),
            }
        ).to_excel(p, index=False, engine="openpyxl"),
    )
    atomic(out_dir / SIDECAR, lambda p: meta.to_csv(p, index=False))


def generate_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    image_size: int = 512,
    workers: int | None = None,
    *,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    age_range: tuple[float, float] = (1.0, 228.0),
    male_fraction: float = 0.54,
    maturity_sd: float = 4.0,
    timing_sd: float = 0.07,
    nuisance: Nuisance | dict | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate (or finish) `n` phantom radiographs under `out_dir`; return the metadata table.

    The table's `attrs` hold `generated` (images made by this call) and `seconds` (time spent).
    """
    if isinstance(nuisance, dict):
        unknown = sorted(set(nuisance) - {f.name for f in fields(Nuisance)})
        if unknown:
            raise MedalError(
                f"phantoms.nuisance.{unknown[0]}: unknown setting; see conf/phantoms.yaml for the keys"
            )
        nuisance = Nuisance(**{k: tuple(v) if isinstance(v, list) else v for k, v in nuisance.items()})
    settings = PhantomSettings(
        n=int(n),
        seed=int(seed),
        image_size=int(image_size),
        splits=tuple(float(f) for f in splits),
        age_range=tuple(float(a) for a in age_range),
        male_fraction=float(male_fraction),
        maturity_sd=float(maturity_sd),
        timing_sd=float(timing_sd),
        nuisance=nuisance or Nuisance(),
    )
    settings.validate()
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise MedalError(f"phantoms.workers={workers}: must be >= 1 (or null for min(2, cores))")
    if workers > 1 and mp.current_process().daemon:
        log.warning("phantoms: running inside a daemonic worker process, generating with 1 process")
        workers = 1
    out_dir = Path(out_dir)
    marker = _begin_folder(out_dir, settings)
    jobs = [
        (out_dir, settings, i, split, folder)
        for i, (split, folder) in enumerate(assign_splits(settings.n, settings.seed, settings.splits))
    ]
    started = time.perf_counter()
    rows, made = [], 0
    bar = tqdm(total=len(jobs), desc="phantoms", unit="img", disable=not progress)
    if workers == 1:
        results = map(_make_image, jobs)
        pool = None
    else:
        # fork: workers inherit the imported modules instead of re-importing them (seconds per worker).
        method = "fork" if sys.platform == "linux" else "spawn"
        pool = mp.get_context(method).Pool(min(workers, len(jobs)))
        results = pool.imap(_make_image, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
    try:
        for row, was_made in results:
            rows.append(row)
            made += was_made
            bar.update()
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - started
    meta = pd.DataFrame(rows)
    meta[FLOOR_COLUMN] = floor_predictions(meta, settings.age_range, settings.maturity_sd).round(3)
    _write_labels(out_dir, meta)
    marker.finish(settings.to_json(), images=len(meta))
    meta.attrs.update(generated=made, seconds=seconds)
    log.info("phantoms: %d images in %s (%d made now, %.1f s)", len(meta), out_dir, made, seconds)
    return meta
