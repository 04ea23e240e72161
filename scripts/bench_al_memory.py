"""Host memory of `medal segment`'s active-learning stages as the pool grows: does every strategy stay bounded?

Each case is one strategy at one pool size n, run in a fresh process (peak resident memory, VmHWM, read after
each phase) through the task's own code: `load_seg_data` over an image cache of n images at the paper's 256
px, `configure` + `build_learner` (conf/segment.yaml: 100 initial labels, 100 per round, val_limit 200, chunks of
al.score_batch_size = 16), one round's evaluation (`learner.evaluate`: Dice on the validation and test masks), one
query (`learner._query`: the strategy scores the pool, the top 100 are selected, pool.json is written) and the
final pass's probability maps (`write_outputs`, with `write_final` replaced by a consumer of the maps: writing
masks and RoIs costs one radiograph at a time and is not what grows with n).

The model is a stand-in with the paper committee's output shapes, not its arithmetic: 3 members, probability
maps of 256 x 256 and a flattened 192-map bottleneck of 32 x 32 (196,608 values a member), computed from the
image in a few array operations. An FC-DenseNet pass at these widths takes ~4 s an image and member on a 2-core
CPU, so the pool's n cannot be scored for real here; what the stand-in leaves out, the networks' activations, is
one chunk's worth whatever n is and the same for every strategy (`--forward` measures it with the real committee
on one chunk). So the figures are what the loop, the data and the strategies hold.

The images are synthetic (smooth random fields, a third with inverted polarity) and the cache files are written
directly (`medal.data.cache`'s format and key, so `load_seg_data` finds them); at 100,000 images only the first
12,611 rows are written and the rest of the cache file is a sparse hole (zeros), which costs no disk.

    python scripts/bench_al_memory.py                                    # n = 500, 2,000, 12,611 (~15 min)
    python scripts/bench_al_memory.py --n 100000 --strategies random coreset --phases load query
    python scripts/bench_al_memory.py --compare-with /tmp/before         # also every case on another source tree
    python scripts/bench_al_memory.py --forward                          # + the real committee's chunk peak

Writes outputs/bench/al_memory.{json,md}: every strategy's peak against `random` at the same n in the same run
(the issue's goal: core-set within 10 % of random), the growth of each peak over n (fitted exponent), and, with
--compare-with, each case against the other tree's same case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ("load", "evaluate", "query", "final")
STRATEGIES = ("random", "coreset", "coreset_full", "hybrid", "entropy", "qbc")
VARIANTS = {"coreset_full": ["strategy=coreset", "strategy.descriptor=full"]}  # strategies with other options
SIZE = 256  # the paper's working resolution
WRITTEN_ROWS = 12_611  # rows of real content in a cache; beyond them a sparse hole (zeros)
SPLITS = (0.9, 0.05, 0.05)  # train (the pool) / val / test; val and test have held-out masks


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[500, 2000, 12_611], help="images in the data set")
    ap.add_argument("--strategies", nargs="+", default=["random", "coreset", "hybrid"], choices=STRATEGIES)
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    ap.add_argument("--root", type=Path, default=Path("outputs/al_memory"), help="synthetic data sets and AL folders")
    ap.add_argument("--compare-with", type=Path, default=None,
                    help="another medal source tree (e.g. `git archive main`): every case runs there too")
    ap.add_argument("--forward", action="store_true",
                    help="also the real paper-size committee's peak on one chunk of 16 images (CPU: minutes)")
    ap.add_argument("--keep-data", action="store_true", help="keep the synthetic caches (GBs) for a rerun")
    ap.add_argument("--name", default="al_memory")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, in this process
    return ap.parse_args()


# -- the stand-in committee ----------------------------------------------------------------------------------
class PaperShaped:
    """A `SegModel` with the paper committee's output shapes at the cost of a few array operations: 3 members,
    probabilities (3, b, S, S), bottleneck vectors (3, b, 192 * (S/8)²) from the image pooled 8x8 through each
    member's own random affine map per channel and a tanh."""

    def __init__(self, members: int = 3, maps: int = 192, factor: int = 8) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.torch, self.factor = torch, factor
        self.weight = 4 * torch.randn(members, 1, maps, 1, 1, generator=gen)
        self.bias = torch.randn(members, 1, maps, 1, 1, generator=gen)
        self.slope = torch.linspace(6.0, 10.0, members)[:, None, None, None]

    def _x(self, images: np.ndarray):
        return self.torch.from_numpy(np.asarray(images, dtype=np.float32))

    def fit(self, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
        return {}

    def predict_probs(self, images: np.ndarray):
        return self.torch.sigmoid(self.slope * (self._x(images)[None] - 0.5))

    def features(self, images: np.ndarray):
        pooled = self.torch.nn.functional.avg_pool2d(self._x(images)[:, None], self.factor)  # (b, 1, h, w)
        out = self.weight * (pooled[None] - 0.5)  # (M, b, maps, h, w): the one full-size tensor, as a committee returns
        return out.add_(self.bias).tanh_().flatten(2)  # (M, b, maps*h*w)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# -- the synthetic data set ----------------------------------------------------------------------------------
def ids_of(n: int) -> list[str]:
    return [f"{i:06d}" for i in range(n)]


def splits_of(n: int) -> np.ndarray:
    cut = np.cumsum([round(s * n) for s in SPLITS[:2]])
    return np.array(["train"] * cut[0] + ["val"] * (cut[1] - cut[0]) + ["test"] * (n - cut[1]))


def _fields(rng: np.random.Generator, b: int) -> np.ndarray:
    """b smooth random fields (b, SIZE, SIZE) in [0, 1]: 16 x 16 noise, bilinearly upsampled."""
    import torch

    coarse = torch.from_numpy(rng.random((b, 1, 16, 16), dtype=np.float32))
    return torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)[:, 0].numpy()


def write_cache(work: Path, ids: list[str], paths: list[str], content: str) -> None:
    """An image cache of `medal.data.cache` (its key, array and meta files) holding synthetic rows."""
    from medal.data.cache import CACHE_DTYPE, CACHE_VERSION, cache_key

    key = cache_key(paths, SIZE, "stretch")
    folder = work / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if array_path.is_file() and meta_path.is_file():
        return
    partial = folder / f".{key}.partial.npy"
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=CACHE_DTYPE, shape=(len(ids), SIZE, SIZE))
    rng = np.random.default_rng(len(ids))
    for start in range(0, min(len(ids), WRITTEN_ROWS), 512):
        fields = _fields(rng, min(512, len(ids) - start, WRITTEN_ROWS - start))
        array[start:start + len(fields)] = fields > 0.5 if content == "masks" else fields
    array.flush()
    del array
    meta_path.write_text(json.dumps({"ids": ids, "failed": {}, "size": SIZE, "fit": "stretch",
                                     "version": CACHE_VERSION}))
    partial.replace(array_path)


def make_data(root: Path, n: int) -> Path:
    """The data set of n images: index.csv (id, path, split), coarse.csv-like polarity, the images' cache and
    the held-out masks' cache (masks/<id>.png are hard links to one small PNG: only their cache is read)."""
    from medal.data.images import write_png

    data = root / f"n{n}"
    if (data / "ready").is_file():
        return data
    ids, split = ids_of(n), splits_of(n)
    paths = [str(data / "images" / f"{i}.png") for i in ids]  # never read: the cache holds the images
    (data / "masks").mkdir(parents=True, exist_ok=True)
    one = write_png(data / "one_mask.png", np.eye(8, dtype=bool))
    held = [i for i, s in zip(ids, split, strict=True) if s != "train"]
    for i in held:
        if not (data / "masks" / f"{i}.png").exists():
            os.link(one, data / "masks" / f"{i}.png")
    write_cache(data / "work", ids, paths, "images")
    write_cache(data / "work", held, [str(data / "masks" / f"{i}.png") for i in held], "masks")
    lines = ["id,path,split,inverted"] + [f"{i},{p},{s},{int(k % 3 == 0)}"
                                          for k, (i, p, s) in enumerate(zip(ids, paths, split, strict=True))]
    (data / "index.csv").write_text("\n".join(lines) + "\n")
    (data / "ready").write_text("")
    return data


# -- one case, in its own process ----------------------------------------------------------------------------
def peak_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, the high-water mark of its own address space (Linux's
    `ru_maxrss` would also count the parent's peak, inherited across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: kB on BSDs, bytes on macOS


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One strategy at one n: the phases in order, each with its seconds and the peak resident memory after it."""
    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir

    import medal.segment.experiment as experiment
    from medal.config import CONF_DIR
    from medal.segment.data import load_seg_data

    torch.set_num_threads(1)
    data_dir = Path(spec["data"])
    out: dict[str, Any] = {"imports": {"peak_mb": peak_mb()}}

    def phase(name: str, fn) -> Any:
        started = time.perf_counter()
        result = fn()
        out[name] = {"seconds": time.perf_counter() - started, "peak_mb": peak_mb()}
        return result

    table = pd.read_csv(data_dir / "index.csv", dtype={"id": str})
    index = table[["id", "path", "split"]]
    inverted = dict(zip(table["id"], table["inverted"].astype(bool), strict=True))
    data = phase("load", lambda: load_seg_data(index, data_dir / "work", SIZE, inverted, True,
                                               data_dir / "masks", 1))
    al_dir = Path(spec["al_dir"])
    shutil.rmtree(al_dir, ignore_errors=True)
    overrides = [f"data.root={data_dir}", f"data.work_dir={data_dir / 'work'}", f"al.dir={al_dir}",
                 "segment.figures=false", "trainer.accelerator=cpu", "al.fast_scoring=false",
                 *VARIANTS.get(spec["strategy"], [f"strategy={spec['strategy']}"])]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="segment", overrides=overrides)
    setup = experiment.configure(cfg)
    learner = experiment.build_learner(setup, data)
    model = PaperShaped()
    learner.model = model
    pool = learner.pool
    train = pool.unlabelled
    label = al_dir / "label.png"
    label.write_bytes((data_dir / "one_mask.png").read_bytes())
    pool.query(train[:setup.al.initial])  # the initial draw, answered: one round done
    for image_id in train[:setup.al.initial]:
        pool.label(image_id, label)
    pool.end_round({}, setup.al.min_delta)
    if "evaluate" in spec["phases"]:
        out["metrics"] = phase("evaluate", lambda: learner.evaluate(model))
        out["evaluate"]["metrics"] = out.pop("metrics")
    if "query" in spec["phases"]:
        phase("query", lambda: learner._query(model))
        out["query"]["pool_json_mb"] = (al_dir / "pool.json").stat().st_size / 2**20
        out["query"]["queried"] = len(pool.pending)
    if "final" in spec["phases"]:
        seen = []

        def consume(outputs, ids, paths, probs, inverted, gold_dir=None):
            """write_final's place: take every map in order, one at a time, keep only a count."""
            seen.append(sum(1 for _ in probs))

        experiment.write_final = consume
        phase("final", lambda: experiment.write_outputs(setup, learner, data))
        out["final"]["maps"] = seen[0]
    return out


def forward_case() -> dict[str, Any]:
    """The real committee (conf/segment.yaml: 3 FC-DenseNets, 192 bottleneck maps) at 256 px, random weights,
    on one chunk of al.score_batch_size images on the CPU: peak memory and time of its forward pass, and core-set's
    projection distortion on those bottleneck vectors (strategy=coreset's dim)."""
    import torch
    from hydra import compose, initialize_config_dir

    from medal.active.scoring import distance_distortion
    from medal.config import CONF_DIR
    from medal.segment.experiment import configure

    torch.set_num_threads(2)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="segment", overrides=["trainer.accelerator=cpu", "al.fast_scoring=false",
                                                        "strategy=coreset", "oracle=folder"])
    setup = configure(cfg)
    seg, al = setup.segment, setup.al
    model = setup.segmenter.build(seed=0, lr=seg.lr, weight_decay=seg.weight_decay, augment=seg.augment,
                                  channels_last=seg.channels_last, shared_init=False, training=None, device="cpu",
                                  fast=False, batch_size=al.score_batch_size)
    images = _fields(np.random.default_rng(0), al.score_batch_size)
    before = peak_mb()
    started = time.perf_counter()
    features = model.features(images)
    out = {"peak_mb": peak_mb(), "before_mb": before, "seconds": time.perf_counter() - started,
           "chunk": al.score_batch_size, "feature_dim": int(features.shape[-1]), "members": int(features.shape[0])}

    class Computed:
        """The vectors just computed, looked up by row (the images are the row numbers)."""

        def features(self, rows: np.ndarray):
            return features[:, [int(r[0, 0]) for r in rows]]

    rows = np.arange(len(images), dtype=np.float32)[:, None, None] * np.ones((1, 1, 1), np.float32)
    out["distortion"] = distance_distortion(Computed(), rows, al.score_batch_size, setup.strategy.dim)
    return out


def spawn(spec: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """A case in a fresh interpreter (its own peak), on `source`'s medal when given."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{env.get('PYTHONPATH', '')}"
    done = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(ns: list[int], values: list[float]) -> float:
    """Slope of log(value) over log(n): 1 = linear growth, 0 = flat.

    Examples:
        >>> round(exponent([10, 100], [5.0, 50.0]), 3)
        1.0
    """
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def main() -> None:
    args = parse()
    if args.case:
        spec = json.loads(args.case)
        print(json.dumps(forward_case() if spec.get("forward") else run_case(spec)))
        return
    from medal.bench import BenchRow, write_bench

    started = time.perf_counter()
    trees = {"this": None} | ({"compare": args.compare_with.resolve()} if args.compare_with else {})
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    for n in args.n:
        data = make_data(args.root, n)
        for strategy in args.strategies:
            for tree, source in trees.items():
                spec = {"data": str(data), "strategy": strategy, "phases": args.phases,
                        "al_dir": str(args.root / f"al_{tree}_{strategy}_n{n}")}
                result = spawn(spec, source)
                results[(tree, strategy, n)] = result
                last = next((p for p in reversed(PHASES) if p in result), "error")
                print(f"{tree:7s} {strategy:12s} n={n:6d}: "
                      + (result["error"] if "error" in result else
                         f"peak {result[last]['peak_mb']:.0f} MB after {last}"), flush=True)
        if not args.keep_data:
            shutil.rmtree(data / "work" / "cache", ignore_errors=True)
            (data / "ready").unlink(missing_ok=True)
    forward = spawn({"forward": True}, None) if args.forward else None

    def peak(r: dict[str, Any]) -> float:
        return max((r[p]["peak_mb"] for p in PHASES if p in r), default=float("nan"))

    rows, lines = [], []
    for tree in trees:
        for strategy in args.strategies:
            for n in args.n:
                r, base = results[(tree, strategy, n)], results.get((tree, "random", n), {})
                if "error" in r:
                    lines.append(f"| {tree} | {strategy} | {n} | failed: {r['error']} |" + " |" * 6)
                    continue
                phases = " | ".join(f"{r[p]['peak_mb']:.0f} ({r[p]['seconds']:.0f} s)" if p in r else "–"
                                    for p in PHASES)
                ratio = peak(r) / peak(base) if base and "error" not in base else float("nan")
                lines.append(f"| {tree} | {strategy} | {n} | {r['imports']['peak_mb']:.0f} | {phases} | "
                             f"{ratio:.3f} | {r.get('query', {}).get('pool_json_mb', float('nan')):.2f} |")
                if strategy != "random" and base and "error" not in base:
                    rows.append(BenchRow(figure=f"peak RSS, {strategy}, n={n} ({tree} code)", value=peak(r), unit="MB",
                                         baseline="random, same n, same code", baseline_value=peak(base),
                                         higher_is_better=False, extra=r))
                if tree == "this" and "compare" in trees and "error" not in results[("compare", strategy, n)]:
                    other = results[("compare", strategy, n)]
                    rows.append(BenchRow(figure=f"peak RSS, {strategy}, n={n} (this code)", value=peak(r), unit="MB",
                                         baseline=f"the same case on {args.compare_with}",
                                         baseline_value=peak(other), higher_is_better=False,
                                         extra={"this": r, "compare": other}))
    growth = []
    for tree in trees:
        for strategy in args.strategies:
            ok = [(n, peak(results[(tree, strategy, n)])) for n in args.n if "error" not in results[(tree, strategy, n)]]
            if len(ok) >= 2:
                first = results[(tree, strategy, ok[0][0])]["imports"]["peak_mb"]  # the interpreter, torch
                above = [(n, p - first) for n, p in ok]
                growth.append(f"{tree} {strategy}: exponent of (peak - imports) over n "
                              f"{exponent(*map(list, zip(*above, strict=True))):.2f}")
    wall = time.perf_counter() - started
    header = ("| code | strategy | n | after imports | " + " | ".join(f"after {p} (s)" for p in PHASES)
              + " | peak / random's | pool.json MB |\n" + "|---" * (6 + len(PHASES)) + "|")
    notes = (f"Peak resident memory (MB, VmHWM) of one process per case, after each phase; {SIZE} px, 3-member "
             "stand-in with the paper committee's output shapes (bottleneck 196,608 values a member), conf/segment.yaml "
             f"(initial 100, per round 100, val_limit 200, al.score_batch_size 16). Splits {SPLITS}. Cases: "
             f"{args.strategies} x n {args.n}, phases {args.phases}"
             + (f"; 'compare' = the same cases on {args.compare_with}" if args.compare_with else "")
             + f". This invocation: {wall / 60:.1f} min on a shared machine.\n\n{header}\n" + "\n".join(lines)
             + "\n\n" + "; ".join(growth) + ".\n")
    if forward is not None:
        notes += (f"\nThe real committee (3 FC-DenseNets, 192 bottleneck maps, 256 px, random weights) on one chunk of "
                  f"{forward.get('chunk')} images on the CPU: peak {forward.get('peak_mb', float('nan')):.0f} MB "
                  f"({forward.get('before_mb', float('nan')):.0f} MB before the pass), {forward.get('seconds', 0):.0f} s, "
                  f"feature vectors of {forward.get('feature_dim')} values x {forward.get('members')} members. Every "
                  "strategy that runs the networks on the CPU adds this once (on a GPU it is GPU memory).")
        d = forward.get("distortion")
        if d:
            notes += (f" Core-set's projection on those vectors ({d['dim_in']:.0f} -> {d['dim']:.0f} values a member, "
                      f"{d['pairs']:.0f} pairs): distance ratio projected / full mean {d['ratio_mean']:.4f}, sd "
                      f"{d['ratio_sd']:.4f}, range {d['ratio_min']:.3f}-{d['ratio_max']:.3f}.")
        notes += "\n"
    path = write_bench(args.name, rows, notes)
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
