"""Relaxed modularity (ALGORITHMS.md §8.1) and the legacy notebook-4 score (§8.3).

A concept is *modular* at a layer when its circuit overlaps little with the rest of the
population: its mean Jaccard similarity to the other concepts sits in the bottom 5 % of
everybody's. The relaxed variant first drops each concept's ⌊p·(N−1)⌋ most similar
neighbours, so a concept with a few close partners can still count as modular.

    J_l[i, j]   Jaccard of the universal masks of i and j at layer l (float32; 0 if both empty)
    T_p[i]      mean of row i without self, after dropping its k = ⌊p·(N−1)⌋ largest values
    pct_p[i]    #{j : T_p[j] <= T_p[i]} / N          (self and ties counted)
    significant pct_p[i] < 0.05  — so at most 5 concepts per (layer, p) when N = 106
    score       number of significant layers (0..8)

float32 is kept on purpose: the released scores were computed in float32, and a float64
mean can resolve or create the near-ties that decide the percentile.

Edge case kept from the release: an empty mask has an all-zero row, hence the smallest
trimmed mean, and is ranked *most* modular. With ≥ 6 empty masks in a layer nobody in that
layer can be significant.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from builder_utils import layout
from builder_utils.concepts import concept_type
from builder_utils.layout import MaskStack

P_VALUES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25)
SIGNIFICANCE = 0.05
NOTEBOOK4_DRAWS = 500
NOTEBOOK4_SEED = 42
# "sorted": every trimmed mean is a float32 sum of the row in descending order, so two concepts
#           with the same neighbour similarities (e.g. identical masks) tie exactly.
# "reference": the release script's element order — row order at p = 0, descending at p > 0.
#           float32 rounding then depends on where a value sits in the row, which can split an
#           exact tie at p = 0 by one ulp. Use it to regenerate the released CSVs bit for bit.
SUMMATION_MODES = ("sorted", "reference")

SCORE_COLUMNS = [f"p={p}" for p in P_VALUES]
DETAIL_COLUMNS = ["object", "type", "layer", "p_trim", "observed_trimmed_jaccard", "percentile", "significant"]


# ----------------------------------------------------------------------------- Jaccard


def jaccard_matrices(masks: np.ndarray) -> np.ndarray:
    """Per-layer Jaccard matrices of `(N, L, W)` boolean masks -> `(L, N, N)` float64.

    Off-diagonal `|a∩b| / |a∪b|`, 0.0 where both masks are empty; the diagonal is left as
    computed (1 for a non-empty mask, 0 for an empty one) — callers set it as they need.
    """
    x = np.ascontiguousarray(np.moveaxis(masks, 1, 0), dtype=np.float64)      # (L, N, W)
    inter = np.rint(x @ np.swapaxes(x, 1, 2))                                # exact integer counts
    sizes = x.sum(axis=2)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _jaccard_float32(masks: np.ndarray) -> np.ndarray:
    # float64 ratio first, then float32: the release stored float(|a∩b| / |a∪b|) in a float32 matrix.
    j = jaccard_matrices(masks).astype(np.float32)
    idx = np.arange(j.shape[1])
    j[:, idx, idx] = 1.0
    return j


def _without_diagonal(j: np.ndarray) -> np.ndarray:
    """`(..., N, N)` -> `(..., N, N−1)`: each row without its own entry, order kept."""
    n = j.shape[-1]
    keep = ~np.eye(n, dtype=bool)
    return j[..., keep].reshape(*j.shape[:-2], n, n - 1)


# ----------------------------------------------------------------------------- relaxed modularity


def trimmed_means(j: np.ndarray, p_values=P_VALUES, summation: str = "sorted") -> np.ndarray:
    """Trimmed mean Jaccard of every row of a `(N, N)` float32 matrix -> `(len(p_values), N)` float32.

    Row i drops its self entry and then its ⌊p·(N−1)⌋ largest values. Each row is sorted once.
    """
    if summation not in SUMMATION_MODES:
        raise ValueError(f"summation must be one of {SUMMATION_MODES}, got {summation!r}")
    j = np.asarray(j, dtype=np.float32)
    others = _without_diagonal(j)
    n_others = others.shape[1]
    descending = np.sort(others, axis=1)[:, ::-1]
    out = np.zeros((len(p_values), j.shape[0]), dtype=np.float32)
    for pi, p in enumerate(p_values):
        k = int(np.floor(p * n_others))
        if n_others - k <= 0:
            continue        # nothing left to average: 0, as the release does
        if k == 0 and summation == "reference":
            kept = others
        else:
            kept = descending[:, k:]
        # Contiguous rows: numpy then sums each row exactly as it sums a 1-D array (same rounding).
        out[pi] = np.ascontiguousarray(kept).mean(axis=1, dtype=np.float32)
    return out


def population_percentile(values: np.ndarray) -> np.ndarray:
    """`#{j : v[j] <= v[i]} / N` for every i (self and ties included), float64."""
    values = np.asarray(values)
    counts = np.searchsorted(np.sort(values), values, side="right")
    return counts / len(values)


def relaxed_modularity(universals: MaskStack, p_values=P_VALUES, significance: float = SIGNIFICANCE,
                       summation: str = "sorted") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Relaxed-modularity scores and per-(layer, object, p) detail, in the release CSV schemas.

    scores: index = object (unnamed), columns `type, p=0.0, p=0.05, p=0.1, p=0.25` (int),
            sorted by p=0.0 desc then p=0.25 desc, ties in name order (stable sort).
    detail: `object, type, layer, p_trim, observed_trimmed_jaccard, percentile, significant`,
            layer-major, then object, then p; the two floats rounded to 4 dp.
    """
    names = list(universals.keys)
    if not names:
        raise ValueError("relaxed_modularity needs at least one universal mask")
    types = [concept_type(n) for n in names]
    n_obj, n_layers, n_p = len(names), universals.n_layers, len(p_values)
    j = _jaccard_float32(universals.masks)

    observed = np.empty((n_layers, n_obj, n_p), dtype=np.float32)
    percentile = np.empty((n_layers, n_obj, n_p), dtype=np.float64)
    for layer in range(n_layers):
        t = trimmed_means(j[layer], p_values, summation)                 # (P, N)
        observed[layer] = t.T
        percentile[layer] = np.stack([population_percentile(row) for row in t], axis=1)
    significant = percentile < significance

    scores = pd.DataFrame(significant.sum(axis=0), index=names, columns=[f"p={p}" for p in p_values])
    scores.insert(0, "type", types)
    first, last = f"p={p_values[0]}", f"p={p_values[-1]}"
    scores = scores.sort_values([first, last], ascending=[False, False], kind="stable")

    detail = pd.DataFrame({
        "object": np.tile(np.repeat(np.array(names, dtype=object), n_p), n_layers),
        "type": np.tile(np.repeat(np.array(types, dtype=object), n_p), n_layers),
        "layer": np.repeat(np.arange(n_layers), n_obj * n_p),
        "p_trim": np.tile(np.asarray(p_values, dtype=np.float64), n_layers * n_obj),
        "observed_trimmed_jaccard": np.round(observed.ravel(), 4),        # float32, as released
        # Python's round (correctly rounded), as released; np.round can differ in the last digit.
        "percentile": [round(float(v), 4) for v in percentile.ravel()],
        "significant": significant.ravel(),
    })
    return scores, detail


def ranking_with_ties(scores: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rank the objects of a scores table by `column` (higher = more modular), ties explicit.

    Columns: object, type, score, rank_min, rank_max, n_tied. Objects sharing a score share
    the positions rank_min..rank_max, so "the top 3" is well defined only if every object
    with rank_min <= 3 also has rank_max <= 3.
    """
    if column not in scores.columns:
        raise KeyError(f"no column {column!r} in scores (has {list(scores.columns)})")
    s = scores[column].to_numpy()
    order = sorted(range(len(s)), key=lambda i: (-s[i], str(scores.index[i])))
    greater = np.array([(s > v).sum() for v in s])
    tied = np.array([(s == v).sum() for v in s])
    out = pd.DataFrame({
        "object": scores.index.to_numpy(dtype=object),
        "type": scores["type"].to_numpy() if "type" in scores.columns else [concept_type(n) for n in scores.index],
        "score": s,
        "rank_min": greater + 1,
        "rank_max": greater + tied,
        "n_tied": tied,
    })
    return out.iloc[order].reset_index(drop=True)


def build_modularity_tables(data_dir: os.PathLike | str, epsilon: float = 0.5, consistency: float = 0.8,
                            summation: str = "sorted") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the universal masks of one setting and write both relaxed-modularity CSVs, atomically."""
    data_dir = Path(data_dir)
    om = layout.read_object_masks(data_dir / layout.object_masks_name(epsilon, consistency), pairs=False)
    scores, detail = relaxed_modularity(om.universals, summation=summation)
    layout.write_table(scores, data_dir / layout.MODULARITY_SCORES, index=True)    # header starts with ','
    layout.write_table(detail, data_dir / layout.MODULARITY_DETAIL)
    return scores, detail


# ----------------------------------------------------------------------------- notebook 4 (legacy)


def notebook4_modularity(universals: MaskStack, n_draws: int = NOTEBOOK4_DRAWS, seed: int = NOTEBOOK4_SEED,
                         alpha: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's "Finding 2" score (ALGORITHMS.md §8.3), reproduced exactly.

    Per layer: keep the *selective* channels (active in some but not all concepts), take each
    concept's mean Jaccard to the N−1 others on those channels, then compare it with a
    bootstrap of `n_draws` population values drawn with a RandomState reseeded to `seed` at
    every layer; the layer counts when `p_low = mean(draws <= own) < alpha`. (The report calls
    this a permutation test; it resamples population values.) A layer with no selective
    channel scores everybody 0 with p_low = 1.

    Returns (scores, detail):
      scores: object, type, modularity_score, mean_J_overall — sorted by score desc, ties in name order;
      detail: object, type, layer, mean_J_to_others, p_low, distinctive, n_selective (layer-major).
    """
    names = list(universals.keys)
    types = [concept_type(n) for n in names]
    n_obj = len(names)
    if n_obj < 2:
        raise ValueError("notebook4_modularity needs at least two universal masks")
    rows = []
    for layer in range(universals.n_layers):
        m = universals.masks[:, layer, :]
        used = m.sum(axis=0)
        sel = m[:, (used > 0) & (used < n_obj)]
        if sel.shape[1] == 0:
            mean_j = np.zeros(n_obj)
            p_low = np.ones(n_obj)
        else:
            j = jaccard_matrices(sel[:, None, :])[0]
            mean_j = _without_diagonal(j).mean(axis=1)
            rng = np.random.RandomState(seed)
            # One draw per call, as the notebook did, so the stream is the notebook's stream.
            draws = mean_j[np.array([rng.randint(n_obj) for _ in range(n_draws)])]
            p_low = (draws[None, :] <= mean_j[:, None]).mean(axis=1)
        for i in range(n_obj):
            rows.append((names[i], types[i], layer, float(mean_j[i]), float(p_low[i]), bool(p_low[i] < alpha),
                         int(sel.shape[1])))
    detail = pd.DataFrame(rows, columns=["object", "type", "layer", "mean_J_to_others", "p_low", "distinctive",
                                         "n_selective"])
    scores = (detail.groupby(["object", "type"], sort=True)
              .agg(modularity_score=("distinctive", "sum"), mean_J_overall=("mean_J_to_others", "mean"))
              .reset_index()
              .sort_values("modularity_score", ascending=False, kind="stable")
              .reset_index(drop=True))
    scores["modularity_score"] = scores["modularity_score"].astype(int)
    return scores, detail
