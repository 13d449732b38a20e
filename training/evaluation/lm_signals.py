"""Does a language-model signal earn a place in the learned ranker? Each candidate signal is added to
the learned ranker's non-LLM features (`learned_no_llm`) and judged on the validation users by the
same user-split cross-validation the serving policy uses, paired user by user, against a control of
the same shape whose information is destroyed:

| signal | what it adds per candidate | control |
|---|---|---|
| `<lm>:similarity` | cosine to the centroid of the user's likes, highest cosine to the last 5 likes (LM item-text embeddings) | the embeddings permuted across items |
| `<lm>:text_ease` | an item-item model (EASE closed form) regularised towards the LM text similarities: score and rank | the same with the permuted embeddings' similarities |
| `<lm>:sasrec_init` | a SASRec whose item table starts from the (PCA-reduced) LM embeddings, as a feature backbone: score and rank | the same initialisation assigned to random items |
| `ease` (no LM) | the plain EASE item-item model: score and rank | none: a collaborative reference for `text_ease` |

Validation numbers are held-out (each user scored by trees fitted without the user); test users are
read once, at the end: each ranker fitted on all validation users, its trees applied to the test users'
lists and compared, paired, with `learned_no_llm`'s. A signal enters the serving policy when it beats
both its control and `learned_no_llm` on validation (paired t test, p < 0.05).
-> reports/lm-signals-<dataset>.{json,md,png}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from service.backbones.feature_source import FeatureInputs
from service.backbones.scorers import load_scorer
from service.llm.hardware import machine_description
from service.ranking.features import rank_among
from service.ranking.fusion import LearnedFusion, feature_matrix, fuse
from service.ranking.text_signals import ItemItemScorer, TextSpace
from training.backbones.training import train_backbone
from training.data import leave_one_out, load_dataset
from training.data.split import Split, require_held_out_users
from training.evaluation.engine_runs import FEATURE_BACKBONES, candidate_lists, candidate_records, relevant_index
from training.evaluation.fusion_selection import LearnedFusionConfig, UserGroup, cross_validate, fit_learned_fusion
from training.evaluation.lm_embeddings import MODELS, embeddings_path, item_embeddings
from training.evaluation.serving_policy import feature_source, record_inputs
from training.metrics import ndcg_at_k
from training.paired_stats import paired_comparison
from training.paths import Paths

console = Console(soft_wrap=True)
M = 10
K = 3
CONTROL_SEED = 7  # the permutation every control uses
SIGNAL_P = 0.05


@dataclass(frozen=True)
class LMSignalsRequest:
    dataset: str = "ml-100k"
    data_path: Path | None = None
    models: tuple[str, ...] = tuple(MODELS)
    list_backbones: tuple[str, ...] = ("lightgcn", "sasrec")
    kinds: tuple[str, ...] = ("similarity", "text_ease", "sasrec_init")
    seed: int = 2024
    folds: int = 5
    ease_lambda: float = 300.0
    text_neighbours: int = 50  # nonzero text similarities kept per item in the EASE prior
    n_boot: int = 1000
    reports_dir: Path = Path("reports")


@dataclass
class StageLists:
    """One list backbone's evaluated users at one stage: candidates, targets and the base inputs."""

    users: list[int]
    items: list[list[int]]
    relevant: list[int | None]
    inputs: list[FeatureInputs]
    liked: list[list[str]]  # item ids liked as of the stage (oldest first)


def stage_lists(paths: Paths, split: Split, backbone: str, stage: str) -> StageLists:
    """Every evaluated user's top-M of `backbone` at `stage`, with the ranker's inputs from the same
    builder `make eval` and the gateway use (`record_inputs`)."""
    ds = split.dataset
    tops = candidate_lists(paths.backbone_dir(ds.name, backbone), ds)
    source = feature_source(paths, split, tuple(dict.fromkeys((*FEATURE_BACKBONES, backbone))))
    records = candidate_records(split, split.evaluated_users(), tops, stage, M)
    return StageLists(users=[r.user for r in records], items=[r.items for r in records], relevant=[relevant_index(r) for r in records],
                      inputs=[record_inputs(source, split, r, backbone) for r in records],
                      liked=[[ds.items[i].item_id for i in split.history(r.user, stage)] for r in records])


# --- the signals ----------------------------------------------------------------------------------
Columns = Callable[[list[str], list[str]], dict[str, np.ndarray]]  # (liked ids, candidate ids) -> columns


def permuted(vectors: np.ndarray, seed: int = CONTROL_SEED) -> np.ndarray:
    return vectors[np.random.default_rng(seed).permutation(len(vectors))]


def text_similarity(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """(n, n) cosine similarities of the centred vectors, each row's `neighbours` largest kept, zero diagonal."""
    space = TextSpace.from_embeddings("s", vectors, [str(i) for i in range(len(vectors))])
    sim = space.vectors.astype(np.float64) @ space.vectors.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    keep = np.argpartition(-sim, neighbours - 1, axis=1)[:, :neighbours]
    out = np.zeros_like(sim)
    rows = np.arange(len(sim))[:, None]
    out[rows, keep] = sim[rows, keep]
    return out


def liked_matrix(split: Split) -> np.ndarray:
    """(users, items) 1.0 where the user liked the item in the training period."""
    users, items = split.liked_pairs()
    x = np.zeros((split.n_users, split.n_items))
    x[users, items] = 1.0
    return x


def ease_weights(x: np.ndarray, lam: float, prior: np.ndarray | None = None) -> np.ndarray:
    """argmin ||X - XB||^2 + lam ||B - prior||^2 with diag(B) = 0 for the (users, items) matrix X:
    B = C - P diag(C_jj / P_jj), P = (X'X + lam I)^-1, C = P (X'X + lam prior).
    With no prior it is EASE (Steck 2019); with one, the text-regularised form."""
    gram = x.T @ x
    p = np.linalg.inv(gram + lam * np.eye(x.shape[1]))
    c = p @ (gram + (lam * prior if prior is not None else 0.0))
    b = c - p * (np.diag(c) / np.diag(p))[None, :]
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def scaled_prior(similarity: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The text prior scaled to the Frobenius norm of plain EASE's weights, so it pulls with the size
    of what the data says."""
    norm = np.linalg.norm(similarity)
    return similarity * (np.linalg.norm(reference) / norm if norm > 0 else 0.0)


@dataclass
class SignalPair:
    name: str
    control: str
    signal: Columns | str  # columns, or the name of a feature-backbone folder (trained per request)
    control_columns: Columns | str | None


def signal_pairs(req: LMSignalsRequest, paths: Paths, split: Split) -> list[SignalPair]:
    ds = split.dataset
    ids = [it.item_id for it in ds.items]
    index = {i: n for n, i in enumerate(ids)}
    likes = liked_matrix(split)
    plain = ease_weights(likes, req.ease_lambda)
    pairs = [SignalPair("ease", "none (collaborative reference)", ItemItemScorer("ease", plain, index).features, None)]
    for model in req.models:
        vectors = item_embeddings(ds, model, paths.cache, paths.artifacts)
        shuffled = permuted(vectors)
        if "similarity" in req.kinds:
            pairs.append(SignalPair(f"{model}:similarity", "embeddings permuted across items",
                                    TextSpace.from_embeddings("lm", vectors, ids).features, TextSpace.from_embeddings("lm", shuffled, ids).features))
        if "text_ease" in req.kinds:
            text = ease_weights(likes, req.ease_lambda, scaled_prior(text_similarity(vectors, req.text_neighbours), plain))
            ctrl = ease_weights(likes, req.ease_lambda, scaled_prior(text_similarity(shuffled, req.text_neighbours), plain))
            pairs.append(SignalPair(f"{model}:text_ease", "text prior from permuted embeddings",
                                    ItemItemScorer("text_ease", text, index).features, ItemItemScorer("text_ease", ctrl, index).features))
        if "sasrec_init" in req.kinds:
            pairs.append(SignalPair(f"{model}:sasrec_init", "LM initialisation assigned to random items",
                                    train_lm_sasrec(paths, split, model, shuffled=False), train_lm_sasrec(paths, split, model, shuffled=True)))
    return pairs


def train_lm_sasrec(paths: Paths, split: Split, model: str, shuffled: bool) -> str:
    """Trains (once) SASRec initialised from `model`'s item embeddings; returns its folder's name."""
    ds = split.dataset
    init = embeddings_path(ds, model, paths.artifacts)
    name = f"sasrec_lm{'_shuffled' if shuffled else ''}"
    folder_name = f"{name}-{init.stem}"
    train_backbone(name, ds, split, paths, overrides={"item_init": str(init), "shuffle_init_seed": CONTROL_SEED if shuffled else None},
                   folder=paths.backbone_dir(ds.name, folder_name))
    return folder_name


# --- judging --------------------------------------------------------------------------------------
def backbone_columns(paths: Paths, split: Split, folder_name: str, lists: StageLists) -> list[dict[str, np.ndarray]]:
    """A trained feature backbone's score and rank columns (named as one, signal and control alike)."""
    ds = split.dataset
    scorer = load_scorer(paths.backbone_dir(ds.name, folder_name), [u.user_id for u in ds.users], [it.item_id for it in ds.items])
    out = []
    for u, items, liked in zip(lists.users, lists.items, lists.liked, strict=True):
        s = scorer.scores(ds.users[u].user_id, liked, [ds.items[i].item_id for i in items])
        out.append({"lm_backbone_score": s, "lm_backbone_rank": rank_among(s)})
    return out


def columns_for(source: Columns | str | None, paths: Paths, split: Split, lists: StageLists) -> list[dict[str, np.ndarray]] | None:
    if source is None:
        return None
    if isinstance(source, str):
        return backbone_columns(paths, split, source, lists)
    ds = split.dataset
    return [source(liked, [ds.items[i].item_id for i in items]) for items, liked in zip(lists.items, lists.liked, strict=True)]


def groups_of(lists: StageLists, columns: list[dict[str, np.ndarray]] | None) -> list[UserGroup]:
    cols = columns or [{} for _ in lists.users]
    return [UserGroup.with_relevant(feature_matrix(M, None, backbone_scores=x.backbone_scores, extra=x.extra | c), rel)
            for x, c, rel in zip(lists.inputs, cols, lists.relevant, strict=True)]


def held_out_ndcg(groups: list[UserGroup], config: LearnedFusionConfig, folds: int) -> np.ndarray:
    _, per_user = cross_validate(groups, config, folds=folds, k=K)
    return per_user["learned"]


def test_ndcg(model: LearnedFusion, lists: StageLists, columns: list[dict[str, np.ndarray]] | None) -> np.ndarray:
    cols = columns or [{} for _ in lists.users]
    out = []
    for x, c, rel in zip(lists.inputs, cols, lists.relevant, strict=True):
        order = fuse(M, {}, learned=model, backbone_scores=x.backbone_scores, extra=x.extra | c).order
        out.append(ndcg_at_k(order, set() if rel is None else {rel}, K))
    return np.asarray(out)


def judge(req: LMSignalsRequest, paths: Paths, split: Split, backbone: str, pairs: list[SignalPair]) -> tuple[list[dict], dict]:
    config = LearnedFusionConfig(guard=False, guard_k=K, seed=req.seed)
    valid, test = stage_lists(paths, split, backbone, "valid"), stage_lists(paths, split, backbone, "test")
    base_valid = held_out_ndcg(groups_of(valid, None), config, req.folds)
    base_model = fit_learned_fusion(groups_of(valid, None), config)
    base_test = test_ndcg(base_model, test, None)
    order_valid = np.asarray([ndcg_at_k(list(range(M)), set() if r is None else {r}, K) for r in valid.relevant])
    order_test = np.asarray([ndcg_at_k(list(range(M)), set() if r is None else {r}, K) for r in test.relevant])
    reference = {"backbone": backbone, "users": {"valid": len(valid.users), "test": len(test.users)},
                 "learned_no_llm": {"valid_ndcg3": float(base_valid.mean()), "test_ndcg3": float(base_test.mean())},
                 "candidate_order": {"valid_ndcg3": float(order_valid.mean()), "test_ndcg3": float(order_test.mean())}}
    rows = []
    for pair in pairs:
        console.print(f"[dim]{backbone}: judging {pair.name}[/dim]")
        sig_v, sig_t = columns_for(pair.signal, paths, split, valid), columns_for(pair.signal, paths, split, test)
        ctrl_v, ctrl_t = columns_for(pair.control_columns, paths, split, valid), columns_for(pair.control_columns, paths, split, test)
        s_valid = held_out_ndcg(groups_of(valid, sig_v), config, req.folds)
        c_valid = held_out_ndcg(groups_of(valid, ctrl_v), config, req.folds) if ctrl_v is not None else None
        vs_ctrl = paired_comparison(s_valid, c_valid, n_boot=req.n_boot, seed=req.seed) if c_valid is not None else None
        vs_base = paired_comparison(s_valid, base_valid, n_boot=req.n_boot, seed=req.seed)
        s_test = test_ndcg(fit_learned_fusion(groups_of(valid, sig_v), config), test, sig_t)
        t_vs_base = paired_comparison(s_test, base_test, n_boot=req.n_boot, seed=req.seed)
        c_test = test_ndcg(fit_learned_fusion(groups_of(valid, ctrl_v), config), test, ctrl_t) if ctrl_v is not None else None
        earns = bool(vs_ctrl is not None and vs_ctrl["diff"] > 0 and vs_ctrl["p_value"] < SIGNAL_P
                     and vs_base["diff"] > 0 and vs_base["p_value"] < SIGNAL_P)
        rows.append({
            "signal": pair.name, "control": pair.control, "backbone": backbone,
            "valid_ndcg3": float(s_valid.mean()),
            "valid_control_ndcg3": float(c_valid.mean()) if c_valid is not None else None,
            "valid_diff_vs_control": vs_ctrl["diff"] if vs_ctrl else None,
            "valid_ci_low": vs_ctrl["ci_low"] if vs_ctrl else None,
            "valid_ci_high": vs_ctrl["ci_high"] if vs_ctrl else None,
            "valid_p": vs_ctrl["p_value"] if vs_ctrl else None,
            "valid_diff_vs_learned_no_llm": vs_base["diff"],
            "valid_vs_learned_no_llm_ci": [vs_base["ci_low"], vs_base["ci_high"]],
            "valid_vs_learned_no_llm_p": vs_base["p_value"],
            "earns_a_place": earns,
            "test_ndcg3": float(s_test.mean()),
            "test_control_ndcg3": float(c_test.mean()) if c_test is not None else None,
            "test_diff_vs_learned_no_llm": t_vs_base["diff"],
            "test_ci_low": t_vs_base["ci_low"],
            "test_ci_high": t_vs_base["ci_high"],
            "test_p": t_vs_base["p_value"],
        })
        console.print(_row_line(rows[-1]))
    return rows, reference


def _f(x: float | None, sign: bool = True) -> str:
    return "—" if x is None else (f"{x:+.4f}" if sign else f"{x:.4f}")


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3f}"


def _row_line(r: dict) -> str:
    ctrl = "" if r["valid_diff_vs_control"] is None else f" vs control {_f(r['valid_diff_vs_control'])} [{_f(r['valid_ci_low'])}, {_f(r['valid_ci_high'])}] p={r['valid_p']:.3f};"
    return (f"{r['backbone']} {r['signal']}: valid {r['valid_ndcg3']:.4f}{ctrl} vs learned_no_llm {_f(r['valid_diff_vs_learned_no_llm'])} "
            f"(p={r['valid_vs_learned_no_llm_p']:.3f}); test vs learned_no_llm {_f(r['test_diff_vs_learned_no_llm'])} [{_f(r['test_ci_low'])}, {_f(r['test_ci_high'])}]")


def markdown(report: dict) -> str:
    lines = [f"# LM signals for the learned ranker ({report['dataset']})", "",
             f"Run {report['created']} on {report['machine']}; {report['seconds'] / 60:.1f} min. "
             f"NDCG@3 on each list backbone's top-{M}; validation numbers held out by {report['folds']}-fold user-split "
             "cross-validation; differences paired per user with 95% bootstrap intervals and paired t-test p. "
             f"A signal earns a place when it beats its control and `learned_no_llm` on validation at p < {SIGNAL_P}. "
             "Test users read once (rankers fitted on all validation users).", ""]
    for ref in report["references"]:
        lines.append(f"- {ref['backbone']}: candidate order valid {ref['candidate_order']['valid_ndcg3']:.4f} / test {ref['candidate_order']['test_ndcg3']:.4f}; "
                     f"`learned_no_llm` valid {ref['learned_no_llm']['valid_ndcg3']:.4f} / test {ref['learned_no_llm']['test_ndcg3']:.4f} "
                     f"({ref['users']['valid']} / {ref['users']['test']} users)")
    lines += ["", "| lists | signal | valid NDCG@3 | control | vs control [95% CI] | p | vs learned_no_llm (p) | earns a place | test vs learned_no_llm [95% CI] |",
              "|---|---|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in report["rows"]:
        ctrl_ci = "—" if r["valid_diff_vs_control"] is None else f"{_f(r['valid_diff_vs_control'])} [{_f(r['valid_ci_low'])}, {_f(r['valid_ci_high'])}]"
        lines.append(f"| {r['backbone']} | {r['signal']} | {r['valid_ndcg3']:.4f} | {_f(r['valid_control_ndcg3'], False)} | {ctrl_ci} | "
                     f"{_p(r['valid_p'])} | {_f(r['valid_diff_vs_learned_no_llm'])} ({r['valid_vs_learned_no_llm_p']:.3f}) | "
                     f"{'yes' if r['earns_a_place'] else 'no'} | {_f(r['test_diff_vs_learned_no_llm'])} [{_f(r['test_ci_low'])}, {_f(r['test_ci_high'])}] |")
    lines += ["", "Controls: " + "; ".join(sorted({f"`{r['signal'].split(':')[-1]}`: {r['control']}" for r in report["rows"]})), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.5), sharey=True)
    labels = [f"{r['backbone']} {r['signal']}" for r in rows]
    y = np.arange(len(rows))
    for ax, (title, key, lo, hi) in zip(axes, (("validation: signal - control", "valid_diff_vs_control", "valid_ci_low", "valid_ci_high"),
                                               ("test: signal - learned_no_llm", "test_diff_vs_learned_no_llm", "test_ci_low", "test_ci_high")), strict=True):
        for i, r in enumerate(rows):
            if r[key] is None:
                continue
            ax.errorbar(r[key], i, xerr=[[r[key] - r[lo]], [r[hi] - r[key]]], fmt="o", color="tab:green" if r["earns_a_place"] else "tab:gray", capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("NDCG@3 difference, 95% CI")
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(req: LMSignalsRequest, paths: Paths) -> list[Path]:
    start = time.perf_counter()
    dataset = load_dataset(req.dataset, req.data_path, cache_dir=paths.cache)
    split = require_held_out_users(leave_one_out(dataset), req.data_path or req.dataset)
    for name in dict.fromkeys((*FEATURE_BACKBONES, *req.list_backbones)):
        train_backbone(name, dataset, split, paths)
    pairs = signal_pairs(req, paths, split)
    rows, refs = [], []
    for backbone in req.list_backbones:
        r, ref = judge(req, paths, split, backbone, pairs)
        rows += r
        refs.append(ref)
    report = {"dataset": dataset.name, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "seconds": time.perf_counter() - start, "folds": req.folds, "k": K, "m": M,
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(req).items()}, "references": refs, "rows": rows,
              "earned": sorted({r["signal"] for r in rows if r["earns_a_place"]})}
    req.reports_dir.mkdir(parents=True, exist_ok=True)
    base = req.reports_dir / f"lm-signals-{dataset.name}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1))
    base.with_suffix(".md").write_text(markdown(report))
    plot(report, base.with_suffix(".png"))
    console.print(base.with_suffix(".md").read_text())
    return [base.with_suffix(s) for s in (".json", ".md", ".png")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.lm_signals", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-path", type=Path)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backbones", nargs="+", default=["lightgcn", "sasrec"])
    parser.add_argument("--kinds", nargs="+", default=["similarity", "text_ease", "sasrec_init"], choices=["similarity", "text_ease", "sasrec_init"])
    args = parser.parse_args(argv)
    req = replace(LMSignalsRequest(), dataset=args.dataset, data_path=args.data_path, models=tuple(args.models),
                  list_backbones=tuple(args.backbones), kinds=tuple(args.kinds))
    run(req, Paths.from_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
