"""How training time and memory grow with the data: `python -m training.backbones.scaling_bench` (`make bench-scaling`).

For each size (synthetic ML-1M look-alikes, training/data/synthetic.py) and each backbone, one
training in a fresh subprocess (so the peak RSS is that training's own, data included):
  * at the largest size (1M ratings by default): the full training with early stopping, exactly as
    `make backbones` runs it, so `train_seconds` is what ML-1M costs;
  * at the smaller sizes: `--epochs-below` epochs (default 3) with the backbone's own settings and a
    validation check after each, which is enough to measure seconds per epoch without paying for
    full trainings whose total says nothing new.
Writes reports/scaling.json (`rows` of {"backbone", "interactions", "seconds_per_epoch",
"train_seconds", "peak_rss_mb", ...} and `machine`), reports/scaling.md and reports/scaling.png.
It is a benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.data.synthetic import SIZES

BACKBONES = ("pop", "mf", "lightgcn", "sgl", "sasrec", "bert4rec", "cl4srec")
ROW_FIELDS = ("backbone", "interactions", "seconds_per_epoch", "train_seconds", "peak_rss_mb")


def machine() -> dict:
    """CPU model, the vector instructions that matter for torch on CPU, cores, threads and memory."""
    from service.llm.hardware import cpu_flags, machine_description

    flags = cpu_flags()
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo") if line.startswith("MemTotal")), None)
    return {
        "description": machine_description(),
        "cpu": next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo") if line.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "vector_flags": sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
        "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "python": platform.python_version(),
    }


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_once(backbone: str, interactions: int, epochs: int | None, seed: int) -> dict:
    """One training on a synthetic set of `interactions` ratings; the measurements as a row."""
    from training.backbones import get_backbone
    from training.data.split import leave_one_out
    from training.data.synthetic import synthetic_movielens

    split = leave_one_out(synthetic_movielens(interactions, seed=seed))
    cls = get_backbone(backbone)
    overrides = {} if epochs is None else {"epochs": epochs, "eval_every": 1}
    config = cls.Config(**{**cls.Config().model_dump(), **overrides})
    model = cls(split.n_users, split.n_items, config)
    log = model.fit(split, progress=False)
    test = model.evaluate(split, "test")
    epoch_seconds = log.epoch_seconds or [log.seconds]
    return {
        "backbone": backbone,
        "interactions": interactions,
        "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3),
        "train_seconds": round(log.seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "mode": "early stopping" if epochs is None else f"{epochs} epochs",
        "epochs": log.epochs_run,
        "best_epoch": log.best_epoch,
        "eval_seconds": round(log.eval_seconds, 2),
        "users": split.n_users,
        "train_likes": int(sum(len(split.liked_sequence(u)) for u in range(split.n_users))),
        "valid_NDCG@10": round(log.best_valid_ndcg10, 4),
        "test_NDCG@10": round(test["NDCG@10"], 4),
        "test_HR@10": round(test["HR@10"], 4),
    }


def run_in_subprocess(backbone: str, interactions: int, epochs: int | None, seed: int, timeout_s: float | None) -> dict:
    cmd = [sys.executable, "-m", "training.backbones.scaling_bench", "--worker", backbone, str(interactions), "--seed", str(seed)]
    if epochs is not None:
        cmd += ["--worker-epochs", str(epochs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{backbone} at {interactions}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_exponent(rows: list[dict], backbone: str) -> float | None:
    """Slope of log(seconds per epoch) against log(interactions): 1 is linear, 2 quadratic."""
    points = [(r["interactions"], r["seconds_per_epoch"]) for r in rows if r["backbone"] == backbone and r["seconds_per_epoch"] > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return round(float(np.polyfit(x, y, 1)[0]), 2)


def report(rows: list[dict], settings: dict) -> dict:
    largest = max(r["interactions"] for r in rows)
    at_largest = [r for r in rows if r["interactions"] == largest]
    return {
        "machine": machine(),
        "settings": settings,
        "rows": rows,
        "growth_exponent": {b: growth_exponent(rows, b) for b in dict.fromkeys(r["backbone"] for r in rows)},
        "largest": {"interactions": largest, "train_seconds_all": round(sum(r["train_seconds"] for r in at_largest), 1)},
    }


def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = [
        f"# Training cost against data size ({m['description']}, {m['torch_threads']} torch threads)",
        "",
        "Synthetic ML-1M look-alikes (training/data/synthetic.py); each training in its own process. "
        f"Largest size: full training with early stopping; smaller sizes: {rep['settings']['epochs_below']} epochs. "
        f"Seven backbones at {rep['largest']['interactions']:,} ratings: **{rep['largest']['train_seconds_all'] / 60:.1f} min** of training in all.",
        "",
        "| backbone | ratings | s / epoch | train s | epochs (best) | peak RSS MB | test NDCG@10 | mode |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rep["rows"]:
        lines.append(
            f"| {r['backbone']} | {r['interactions']:,} | {r['seconds_per_epoch']:.2f} | {r['train_seconds']:.1f} | "
            f"{r['epochs']} ({r['best_epoch']}) | {r['peak_rss_mb']:.0f} | {r['test_NDCG@10']:.4f} | {r['mode']} |"
        )
    lines += ["", "Growth of seconds per epoch, slope of log(s/epoch) on log(ratings) (1 = linear, 2 = quadratic):", ""]
    lines += [f"- {b}: {e}" for b, e in rep["growth_exponent"].items()]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backbone in dict.fromkeys(r["backbone"] for r in rep["rows"]):
        rows = sorted((r for r in rep["rows"] if r["backbone"] == backbone), key=lambda r: r["interactions"])
        x = [r["interactions"] for r in rows]
        left.plot(x, [r["seconds_per_epoch"] for r in rows], marker="o", label=backbone)
        right.plot(x, [r["peak_rss_mb"] for r in rows], marker="o", label=backbone)
    left.set(xlabel="ratings", ylabel="seconds per epoch", title="time per epoch")
    right.set(xlabel="ratings", ylabel="peak RSS (MB)", title="peak memory")
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(rep["machine"]["description"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(rep: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "scaling.json", out / "scaling.md"]
    written[0].write_text(json.dumps(rep, indent=2) + "\n")
    written[1].write_text(markdown(rep))
    if plot(rep, out / "scaling.png"):
        written.append(out / "scaling.png")
    return written


def run(sizes: list[int], backbones: list[str], epochs_below: int, seed: int, out: Path, timeout_s: float | None = None) -> dict:
    largest = max(sizes)
    rows = []
    start = time.perf_counter()
    plan = [(n, b) for n in sorted(sizes) for b in backbones]
    for k, (n, backbone) in enumerate(plan, 1):
        epochs = None if n == largest else epochs_below
        print(f"[{k}/{len(plan)}] {backbone} on {n:,} ratings ({'early stopping' if epochs is None else f'{epochs} epochs'}) ...", end=" ", flush=True)
        row = run_in_subprocess(backbone, n, epochs, seed, timeout_s)
        rows.append(row)
        print(f"{row['seconds_per_epoch']:.2f} s/epoch, {row['train_seconds']:.0f} s, {row['epochs']} epochs, "
              f"{row['peak_rss_mb']:.0f} MB, test NDCG@10 {row['test_NDCG@10']:.4f} [{(time.perf_counter() - start) / 60:.1f} min]", flush=True)
    rep = report(rows, {"sizes": sorted(sizes), "backbones": backbones, "epochs_below": epochs_below, "seed": seed})
    for path in write_reports(rep, out):
        print(f"wrote {path}")
    print(f"{len(backbones)} backbones at {largest:,} ratings: {rep['largest']['train_seconds_all'] / 60:.1f} min of training")
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.backbones.scaling_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="numbers of ratings (default 100K 250K 500K 1M)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--epochs-below", type=int, default=3, help="epochs trained at the sizes below the largest")
    p.add_argument("--seed", type=int, default=0, help="of the synthetic data")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--timeout", type=float, default=None, help="seconds per training before giving up")
    p.add_argument("--worker", nargs=2, metavar=("BACKBONE", "RATINGS"), help=argparse.SUPPRESS)
    p.add_argument("--worker-epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(train_once(args.worker[0], int(args.worker[1]), args.worker_epochs, args.seed)))
        return 0
    run(args.sizes, args.backbones, args.epochs_below, args.seed, args.out, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
