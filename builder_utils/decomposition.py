"""Stage 14 — split each universal circuit A into concept-only, shared and token-only parts.

ALGORITHMS.md §7. A = the universal mask of a keyword concept, B = its checker mask (prompts
that contain the keyword token but not the concept). Per (concept, layer):

    concept_only = |A∖B|    shared = |A∩B|    token_only = |B∖A|
    concept_fraction = round(concept_only / |A|, 4)    token_fraction = round(shared / |A|, 4)

both 0.0 when |A| = 0; such rows are kept. The concepts compared ("testable") are
sorted(universal ∩ checker ∩ KEYWORD_MAP) — 58 in the release.

Two aggregations of the concept fraction exist and are NOT interchangeable (PAPER_CLAIMS.md §0):

* (R) mean of rows — `summarise`: the flat mean over (concept, layer) rows of the per-row
  rounded fractions, empty-A rows counted as 0. This is `14_summary.csv`.
* (P) pooled — `pooled_concept_fraction`: Σ concept_only / Σ(concept_only + shared) over the
  rows of a group. This is what the write-up tables (WU §7.3–7.5) report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from builder_utils import layout
from builder_utils.concepts import ATOMICITY_AST, KEYWORD_MAP, concept_key, concept_type
from builder_utils.layout import MaskStack

Setting = tuple[float, float]

ROW_COLUMNS = ["target", "concept_type", "layer", "A_size", "B_size", "concept_only", "shared", "token_only",
               "concept_fraction", "token_fraction"]
FRACTION_DIGITS = 4     # per-row fractions and summary means
SIZE_DIGITS = 1         # summary mean sizes

# Groups of the write-up tables (PAPER_CLAIMS.md §0) for the pooled aggregation.
MODULAR: tuple[str, ...] = tuple(concept_key("ast", n) for n in ATOMICITY_AST)


def testable_concepts(universal: MaskStack, checker: MaskStack,
                      keyword_concepts: Iterable[str] = KEYWORD_MAP) -> list[str]:
    return sorted(set(universal.keys) & set(checker.keys) & set(keyword_concepts))


def decompose(universal: MaskStack, checker: MaskStack,
              keyword_concepts: Iterable[str] = KEYWORD_MAP) -> pd.DataFrame:
    """Long rows (testable concept, layer), concept then layer; columns `ROW_COLUMNS`."""
    if universal.width != checker.width or universal.n_layers != checker.n_layers:
        raise ValueError(f"universal masks are (layers, width) = {(universal.n_layers, universal.width)} but "
                         f"checker masks are {(checker.n_layers, checker.width)}")
    targets = testable_concepts(universal, checker, keyword_concepts)
    u_index, c_index = universal.index(), checker.index()
    a = universal.masks[[u_index[t] for t in targets]].astype(bool)      # (T, L, W)
    b = checker.masks[[c_index[t] for t in targets]].astype(bool)
    shared = (a & b).sum(-1).ravel()
    n_layers = universal.n_layers
    return rows_from_counts(pd.DataFrame({
        "target": np.repeat(np.array(targets, dtype=object), n_layers),
        "layer": np.tile(np.arange(n_layers, dtype=np.int64), len(targets)),
        "concept_only": a.sum(-1).ravel() - shared, "shared": shared,
        "token_only": b.sum(-1).ravel() - shared,
    }))


def rows_from_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """Full decomposition rows (`ROW_COLUMNS`) from co / sh / to counts per (target, layer).

    The one place of the per-row arithmetic: |A| = co + sh, |B| = sh + to, and each fraction
    rounded per row to 4 dp, 0.0 when A is empty (the row is kept).
    """
    co, sh, to = (counts[c].to_numpy(np.int64) for c in ("concept_only", "shared", "token_only"))
    if (np.concatenate([co, sh, to]) < 0).any():
        raise ValueError("negative co / sh / to count")
    a_size = co + sh

    # Python's round on Python floats, row by row, as the release did (np.round can differ at ties).
    def fraction(part: np.ndarray) -> list[float]:
        return [round(float(p / s), FRACTION_DIGITS) if s > 0 else 0.0
                for p, s in zip(part.tolist(), a_size.tolist())]

    return pd.DataFrame({
        "target": counts["target"].to_numpy(dtype=object),
        "concept_type": np.array([concept_type(t) for t in counts["target"]], dtype=object),
        "layer": counts["layer"].to_numpy(np.int64),
        "A_size": a_size, "B_size": sh + to,
        "concept_only": co, "shared": sh, "token_only": to,
        "concept_fraction": np.array(fraction(co), dtype=np.float64),
        "token_fraction": np.array(fraction(sh), dtype=np.float64),
    }, columns=ROW_COLUMNS)


def _mean(values: pd.Series, digits: int) -> float | None:
    # The release rounded pandas' mean (a numpy float64) with round(), i.e. numpy's rounding.
    return None if values.empty else float(np.round(np.float64(values.mean()), digits))


def summarise(rows: pd.DataFrame, epsilon: float, consistency: float) -> dict:
    """One `14_summary.csv` row (aggregation R: mean over rows of per-row rounded fractions)."""
    targets = rows["target"].drop_duplicates()
    kind = rows["target"].map(concept_type)
    ast, blt = rows[kind == "ast"], rows[kind == "builtin"]
    summary = {
        "epsilon": float(epsilon), "consistency": float(consistency),
        "n_testable": int(len(targets)),
        "n_ast": int(sum(concept_type(t) == "ast" for t in targets)),
        "n_builtin": int(sum(concept_type(t) == "builtin" for t in targets)),
        "mean_concept_fraction": _mean(rows["concept_fraction"], FRACTION_DIGITS),
        "mean_token_fraction": _mean(rows["token_fraction"], FRACTION_DIGITS),
        "ast_concept_fraction": _mean(ast["concept_fraction"], FRACTION_DIGITS),
        "ast_token_fraction": _mean(ast["token_fraction"], FRACTION_DIGITS),
        "blt_concept_fraction": _mean(blt["concept_fraction"], FRACTION_DIGITS),
        "blt_token_fraction": _mean(blt["token_fraction"], FRACTION_DIGITS),
        "mean_A_size": _mean(rows["A_size"], SIZE_DIGITS),
        "mean_B_size": _mean(rows["B_size"], SIZE_DIGITS),
    }
    return {c: summary[c] for c in layout.SUMMARY_COLUMNS}


def _group_rows(rows: pd.DataFrame, group: str | Iterable[str]) -> pd.DataFrame:
    if isinstance(group, str):
        if group == "all":
            return rows
        if group in ("ast", "builtin"):
            return rows[rows["concept_type"] == group]
        if group == "modular":
            return rows[rows["target"].isin(MODULAR)]
        if group == "non_modular_ast":
            return rows[(rows["concept_type"] == "ast") & ~rows["target"].isin(MODULAR)]
        raise ValueError(f"unknown group {group!r}: use all, ast, builtin, modular, non_modular_ast "
                         f"or a list of targets")
    return rows[rows["target"].isin(list(group))]


def pooled_concept_fraction(rows: pd.DataFrame, group: str | Iterable[str] = "all",
                            layers: Iterable[int] | None = None) -> float:
    """Aggregation P: Σ concept_only / Σ(concept_only + shared) over a group's (concept, layer) rows.

    `group`: "all", "ast", "builtin", "modular" (the atomicity six), "non_modular_ast", or an
    iterable of targets; `layers` restricts the rows (e.g. [5] for WU §7.4). Unrounded; NaN when
    the group's universal masks are all empty (the fraction is undefined, not 0).
    """
    sub = _group_rows(rows, group)
    if layers is not None:
        sub = sub[sub["layer"].isin(list(layers))]
    co, sh = int(sub["concept_only"].sum()), int(sub["shared"].sum())
    return co / (co + sh) if co + sh else float("nan")


def build_decomposition_tables(data_dir: os.PathLike | str, settings: Iterable[Setting] = layout.SETTINGS,
                               keyword_concepts: Iterable[str] = KEYWORD_MAP) -> pd.DataFrame:
    """Per setting, `14_target_checker_eps{ε}_cons{C}.csv`; then `14_summary.csv` (one row per setting
    with at least one testable concept, in the given order — ε-major for `layout.SETTINGS`).

    A setting without testable concepts gets neither a table nor a summary row, as in the release.
    Returns the summary.
    """
    data_dir = Path(data_dir)
    keyword_concepts = list(keyword_concepts)
    summary_rows = []
    for e, c in tqdm(list(settings), desc="14 decomposition", unit="setting"):
        universal = layout.read_object_masks(data_dir / layout.object_masks_name(e, c), pairs=False).universals
        checker = layout.read_checker_masks(data_dir / layout.checker_masks_name(e, c)).masks
        rows = decompose(universal, checker, keyword_concepts)
        if rows.empty:
            continue
        layout.write_target_checker(data_dir / layout.target_checker_name(e, c), rows)
        summary_rows.append(summarise(rows, e, c))
    summary = pd.DataFrame(summary_rows, columns=layout.SUMMARY_COLUMNS)
    layout.write_table(summary, data_dir / layout.SUMMARY)
    return summary
