"""Command line of the offline pipeline: `python -m training <command>`.

  data        load a dataset, print its counts and split sizes, export the gateway's serving tables
  backbone    train one backbone and write artifacts/<dataset>/backbones/<name>/
  backbones   train several (skipping trained ones) and write reports/backbones-<dataset>.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from service.ranking.prompts import ITEM_TOKEN_MODES
from training.backbones.training import train_backbone
from training.data import LOADERS, DataError, leave_one_out, load_dataset, require_held_out_users
from training.data.serving_export import write_serving_tables
from training.evaluation.quality_report import VARIANTS
from training.paths import Paths
from training.tuning.item_tokens import VECTOR_KINDS

console = Console(soft_wrap=True)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="ml-100k", help=f"dataset format: {', '.join(LOADERS)}")
    p.add_argument("--data-path", type=Path, default=None, help="folder with the original files (default: embedded ML-100K)")


def _parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key] = value
    return out


def _load(args, paths: Paths):
    dataset = load_dataset(args.dataset, args.data_path, cache_dir=paths.cache)
    return dataset, require_held_out_users(leave_one_out(dataset), args.data_path or args.dataset)


def cmd_data(args, paths: Paths) -> int:
    dataset, split = _load(args, paths)
    table = Table(title=f"{dataset.name}")
    table.add_column("what")
    table.add_column("count", justify="right")
    summary = {**dataset.summary(), **split.summary()}
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)
    serving = write_serving_tables(dataset, paths.serving_dir(dataset.name))
    (paths.artifacts / dataset.name / "data_summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"serving tables -> {serving}")
    return 0


def cmd_backbone(args, paths: Paths) -> int:
    dataset, split = _load(args, paths)
    train_backbone(args.name, dataset, split, paths, _parse_overrides(args.set), args.force)
    write_serving_tables(dataset, paths.serving_dir(dataset.name))
    return 0


def metrics_table_markdown(dataset: str, reports: dict[str, dict]) -> str:
    cols = ["HR@3", "NDCG@3", "HR@5", "NDCG@5", "HR@10", "NDCG@10"]
    lines = [
        f"Backbones on {dataset}: leave-one-out test item, full catalogue, rated items masked. Every backbone trained on "
        "these data (artifacts/<dataset>/backbones), each with the date and machine of its run (— where its run predates them).",
        "",
        "| backbone | " + " | ".join(cols) + " | best epoch | train s | trained | machine |",
        "|---|" + "---:|" * (len(cols) + 2) + "---|---|",
    ]
    for name, r in sorted(reports.items(), key=lambda kv: -kv[1]["NDCG@10"]):
        cells = " | ".join(f"{r[c]:.4f}" for c in cols)
        lines.append(f"| {name} | {cells} | {r.get('best_epoch', '')} | {r.get('train_seconds', '')} | {r.get('trained_at') or '—'} | {r.get('machine') or '—'} |")
    return "\n".join(lines) + "\n"


def trained_backbones(paths: Paths, dataset: str, split_fingerprint: str) -> dict[str, dict]:
    """folder name -> metrics of every backbone exported for this data split."""
    out = {}
    for metrics in sorted((paths.artifacts / dataset / "backbones").glob("*/metrics.json")):
        report = json.loads(metrics.read_text())
        if report.get("data_fingerprint") == split_fingerprint:
            out[metrics.parent.name] = report
    return out


def cmd_backbones(args, paths: Paths) -> int:
    from training.data.fingerprint import split_fingerprint

    dataset, split = _load(args, paths)
    for name in args.names:
        train_backbone(name, dataset, split, paths, {}, args.force)
    write_serving_tables(dataset, paths.serving_dir(dataset.name))
    reports = trained_backbones(paths, dataset.name, split_fingerprint(split))
    table = Table(title=f"backbones on {dataset.name} (test, full catalogue)")
    for col in ["backbone", "HR@3", "NDCG@3", "HR@5", "NDCG@5", "HR@10", "NDCG@10"]:
        table.add_column(col, justify="right")
    for name, r in reports.items():
        table.add_row(name, *(f"{r[c]:.4f}" for c in ["HR@3", "NDCG@3", "HR@5", "NDCG@5", "HR@10", "NDCG@10"]))
    console.print(table)
    out = Path("reports") / f"backbones-{dataset.name}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(metrics_table_markdown(dataset.name, reports))
    console.print(f"wrote {out}")
    return 0


def cmd_tune(args, paths: Paths) -> int:
    from training.evaluation.workflow import run_tune
    from training.tuning.pipeline import TuneRequest

    req = TuneRequest(
        dataset=args.dataset,
        data_path=args.data_path,
        backbone=args.backbone,
        sampling=args.sampling,
        profile=args.profile,
        model_path=args.model_path,
        enhancement=not args.no_enhancement,
        position_shift=not args.no_position_shift,
        hints=args.hints,
        pointwise_hint=not args.no_pointwise_hint,
        item_tokens=args.item_tokens,
        item_vectors=args.item_vectors,
        export_dir=args.export_dir,
    )
    run_tune(req, paths)
    return 0


def cmd_variants(args, paths: Paths) -> int:
    """Each tuning variant tuned into its own export folder and evaluated as `make eval` does; the
    rows meet in reports/quality-<dataset>.*. Cached steps are reused, so a rerun only fills gaps."""
    from dataclasses import replace

    from training.evaluation.evaluate import EvalRequest, run_eval
    from training.evaluation.quality_report import variant_export_dir
    from training.evaluation.workflow import run_tune
    from training.tuning.pipeline import TuneRequest

    base = TuneRequest(dataset=args.dataset, backbone=args.backbone, profile=args.profile)
    for variant in args.variants:
        export_dir = variant_export_dir(paths.artifacts, args.dataset, variant)
        print(f"== {variant}: tune -> {export_dir}, then eval", flush=True)
        run_tune(replace(base, export_dir=export_dir, **VARIANTS[variant]), paths)
        run_eval(EvalRequest(dataset=args.dataset, ms=tuple(args.m), model_dir=export_dir), paths)
    return 0


def cmd_ablate(args, paths: Paths) -> int:
    import json

    from training.evaluation.ablation import ablation_markdown, ablation_report, run_ablation
    from training.tuning.pipeline import TuneRequest

    base = TuneRequest(dataset=args.dataset, data_path=args.data_path, backbone=args.backbone, profile=args.profile)
    report = ablation_report(run_ablation(base, paths, args.variants))
    out = Path("reports")
    out.mkdir(exist_ok=True)
    (out / f"ablation-{args.dataset}.json").write_text(json.dumps(report, indent=2))
    md = ablation_markdown(report, f"Tuning ablations, {args.dataset}, {args.backbone} hints, {args.profile} profile")
    (out / f"ablation-{args.dataset}.md").write_text(md)
    print(md)
    return 0


def cmd_eval(args, paths: Paths) -> int:
    from training.evaluation.evaluate import EvalRequest, run_eval

    req = EvalRequest(
        dataset=args.dataset,
        data_path=args.data_path,
        backbones=tuple(args.backbones),
        ms=tuple(args.m),
        test_users=args.test_users,
        valid_users=args.valid_users,
        model_dir=args.model_dir,
        dtype=args.dtype,
    )
    model_dir = args.model_dir or paths.artifacts / args.dataset / "model"
    if not (model_dir / "manifest.json").is_file():
        print(f"error: {model_dir / 'manifest.json'}: no tuned model; run `make tune` first", file=sys.stderr)
        return 2
    run_eval(req, paths)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="load and split a dataset, print its counts")
    _add_data_args(p)
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("backbone", help="train one backbone")
    _add_data_args(p)
    p.add_argument("--name", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--force", action="store_true", help="retrain even if artifacts exist")
    p.set_defaults(func=cmd_backbone)
    p = sub.add_parser("backbones", help="train several backbones, skipping trained ones")
    _add_data_args(p)
    p.add_argument("--names", nargs="+", default=["pop", "mf", "lightgcn", "sgl", "sasrec", "bert4rec", "cl4srec"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_backbones)
    p = sub.add_parser("tune", help="sampling -> instructions -> LoRA -> merged export (trains the backbone if needed)")
    _add_data_args(p)
    p.add_argument("--backbone", default="lightgcn", help="backbone whose ranks are the prompt hints and whose embeddings drive sampling")
    p.add_argument("--sampling", default="adaptive", choices=["adaptive", "uniform", "importance", "clustering"])
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu", "tiny"])
    p.add_argument("--model-path", type=Path, default=None, help="local Hugging Face model folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--no-enhancement", action="store_true", help="ablation: prompts without backbone hints")
    p.add_argument("--no-position-shift", action="store_true", help="ablation: keep history and candidate order")
    p.add_argument("--hints", default="honest", choices=["honest", "paper"], help="honest (default): from a backbone fitted before each target; paper: from the serving backbone, which saw the targets")
    p.add_argument("--no-pointwise-hint", action="store_true", help="pointwise prompts without the rank hint")
    p.add_argument("--item-tokens", default="off", choices=list(ITEM_TOKEN_MODES), help="collaborative item tokens: beside the titles, or only the tokens (default off)")
    p.add_argument("--item-vectors", default="real", choices=list(VECTOR_KINDS), help="with --item-tokens: shuffled is the ablation (each item gets another item's vector)")
    p.add_argument("--export-dir", type=Path, default=None, help="default artifacts/<dataset>/model")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("ablate", help="tuning ablations: uniform sampling, no enhancement, no position shifting -> reports/ablation-<dataset>.{json,md}")
    _add_data_args(p)
    p.add_argument("--backbone", default="lightgcn")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu", "tiny"])
    p.add_argument("--variants", nargs="+", default=None, help="default: full uniform_sampling no_enhancement no_position_shift")
    p.set_defaults(func=cmd_ablate)
    p = sub.add_parser("variants", help="tune and evaluate each tuning variant (honest/paper hints, pointwise hint, item tokens) -> reports/quality-<dataset>.*")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--backbone", default="lightgcn")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu", "tiny"])
    p.add_argument("--variants", nargs="+", default=["honest_hints", "paper_hints", "honest_hints_no_pointwise_hint"], choices=list(VARIANTS))
    p.add_argument("--m", nargs="+", type=int, default=[10])
    p.set_defaults(func=cmd_variants)
    p = sub.add_parser("eval", help="rerank backbones' top-m with the tuned LLM (real vLLM server) and report")
    _add_data_args(p)
    p.add_argument("--backbones", nargs="+", default=["lightgcn", "sasrec"])
    p.add_argument("--m", nargs="+", type=int, default=[10], help="candidate list lengths (default 10; 20 costs about twice as much)")
    p.add_argument("--test-users", type=int, default=0, help="0 (default): every evaluated user")
    p.add_argument("--valid-users", type=int, default=0, help="0 (default): every evaluated user")
    p.add_argument("--model-dir", type=Path, default=None, help="default artifacts/<dataset>/model")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 where the CPU has bf16 instructions, else float32")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, Paths.from_env())
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as exc:  # unknown backbone, bad --set value (pydantic errors are ValueErrors)
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc).splitlines()[0]
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
