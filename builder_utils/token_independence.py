"""Token independence — the 5B comparison (ALGORITHMS.md §9; PAPER_CLAIMS K01–K06).

How much of a concept's universal circuit A is *not* explained by its bare keyword token?
B is the 5A token-checker mask (prompts that contain the keyword but not the concept).
Per (concept, layer) the counts come from `decomposition.decompose` — the one implementation
of the A∖B / A∩B / B∖A arithmetic, shared with stage 14:

    A_only = |A∖B|    A_and_B = |A∩B|    B_only = |B∖A|
    concept_fraction = A_only / |A|,  token_fraction = A_and_B / |A|   (4 dp; both 0 when |A| = 0)

Inputs, as in 5B: A = the universal masks at ε = 0.001, C = 0.8 (the release's
`13_object_masks_eps0.001_cons0.8.h5`, equivalent to the notebook's `universal_106x50.h5`),
B = `token_checker_masks.h5`. Not the 13/14 object × 11B checker masks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from builder_utils import layout
from builder_utils.concepts import KEYWORD_MAP
# MODULAR: 5B's six ("score > 0 in Experiment 1"), the same concepts as the atomicity six.
from builder_utils.decomposition import MODULAR, decompose
from builder_utils.layout import MaskStack

HIGH_TOKEN_FRACTION = 0.5

DETAIL_COLUMNS = ["A_size", "B_size", "A_only", "A_and_B", "B_only", "token_fraction", "concept_fraction",
                  "object", "type", "keyword", "layer"]
SUMMARY_MEANS = ["concept_fraction", "token_fraction", "A_size", "A_and_B", "A_only", "B_only"]
SUMMARY_COLUMNS = ["object", "type", "keyword"] + SUMMARY_MEANS
NO_KEYWORD_COLUMNS = ["object", "status"]

# decompose() column -> 5B column
_RENAME = {"target": "object", "concept_type": "type", "concept_only": "A_only", "shared": "A_and_B",
           "token_only": "B_only"}


def token_independence_detail(universal: MaskStack, checker: MaskStack,
                              keyword_map: Mapping[str, dict] = KEYWORD_MAP) -> pd.DataFrame:
    """One row per (keyword concept present in both stacks, layer), object then layer, 5B columns."""
    long = decompose(universal, checker, keyword_concepts=keyword_map).rename(columns=_RENAME)
    missing = [c for c in DETAIL_COLUMNS if c not in long.columns and c != "keyword"]
    if missing:
        raise ValueError(f"decompose() output lacks column(s) {missing}; has {list(long.columns)}")
    long["keyword"] = [keyword_map[o]["keyword"] for o in long["object"]]
    long = long.sort_values(["object", "layer"], kind="stable").reset_index(drop=True)
    return long[DETAIL_COLUMNS]


def token_independence_summary(detail: pd.DataFrame) -> pd.DataFrame:
    """Per-object means over its layers (empty-A layers count as 0), 4 dp, by concept_fraction desc.

    The sort is stable, so objects with equal concept_fraction stay in name order (the
    notebook's default quicksort left that order undefined).
    """
    means = (detail.groupby(["object", "type", "keyword"], sort=True)[SUMMARY_MEANS].mean().round(4)
             .reset_index())
    return means.sort_values("concept_fraction", ascending=False, kind="mergesort").reset_index(drop=True)


def no_keyword_table(universal: MaskStack, keyword_map: Mapping[str, dict] = KEYWORD_MAP) -> pd.DataFrame:
    """The universal concepts without a keyword token (48 in the release), sorted, status 'no_keyword'."""
    objs = [k for k in universal.keys if k not in keyword_map]
    return pd.DataFrame({"object": objs, "status": ["no_keyword"] * len(objs)}, columns=NO_KEYWORD_COLUMNS)


def group_means(detail: pd.DataFrame, groups: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
    """Flat means over (object, layer) rows of concept_fraction and token_fraction (K02–K04).

    Rows: `all`, `ast`, `builtin`, then one per named group (default: `modular`, 5B's six).
    Columns: n_objects, n_rows, concept_fraction, token_fraction. A group with no rows is NaN.
    """
    groups = {"modular": MODULAR} if groups is None else groups
    selections = {"all": detail, "ast": detail[detail["type"] == "ast"],
                  "builtin": detail[detail["type"] == "builtin"]}
    for name, members in groups.items():
        selections[name] = detail[detail["object"].isin(list(members))]
    rows = {name: {"n_objects": sub["object"].nunique(), "n_rows": len(sub),
                   "concept_fraction": sub["concept_fraction"].mean() if len(sub) else float("nan"),
                   "token_fraction": sub["token_fraction"].mean() if len(sub) else float("nan")}
            for name, sub in selections.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def high_token_layers(detail: pd.DataFrame, threshold: float = HIGH_TOKEN_FRACTION) -> dict[str, list[int]]:
    """Objects with token_fraction > threshold at some layer, and those layers (K05), object order."""
    hit = detail[detail["token_fraction"] > threshold]
    return {obj: sorted(int(l) for l in sub["layer"]) for obj, sub in hit.groupby("object", sort=True)}


def build_token_independence_tables(data_dir: os.PathLike | str,
                                    epsilon: float = layout.TOKEN_CHECKER_SETTING[0],
                                    consistency: float = layout.TOKEN_CHECKER_SETTING[1]
                                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read A (universal masks at ε, C) and B (`token_checker_masks.h5`); write the three 5B CSVs atomically."""
    data_dir = Path(data_dir)
    universal = layout.read_object_masks(data_dir / layout.object_masks_name(epsilon, consistency),
                                         pairs=False).universals
    checker = layout.read_checker_masks(data_dir / layout.TOKEN_CHECKER_MASKS).masks
    detail = token_independence_detail(universal, checker)
    summary = token_independence_summary(detail)
    no_keyword = no_keyword_table(universal)
    layout.write_table(detail, data_dir / layout.TOKEN_INDEPENDENCE_DETAIL)
    layout.write_table(summary, data_dir / layout.TOKEN_INDEPENDENCE_SUMMARY)
    layout.write_table(no_keyword, data_dir / layout.TOKEN_INDEPENDENCE_NO_KEYWORD)
    return detail, summary, no_keyword
