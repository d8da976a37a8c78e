"""Relaxed modularity (ALGORITHMS.md §8.1) and the notebook-4 score (§8.3) on masks with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from builder_utils import layout
from builder_utils.concepts import concept_keys
from builder_utils.layout import MaskStack, ObjectMasks
from builder_utils.modularity import (DETAIL_COLUMNS, build_modularity_tables, notebook4_modularity,
                                      population_percentile, ranking_with_ties, relaxed_modularity, trimmed_means)

NAMES = concept_keys()          # the 106 release concepts
N = len(NAMES)
P_COLS = ["p=0.0", "p=0.05", "p=0.1", "p=0.25"]
CORE = np.arange(10)


def _planted() -> MaskStack:
    """Every concept = the same 10 'core' channels at every layer, except:

    Break isolated (disjoint channels) at layers 1, 3, 5 and 7; ImportFrom isolated at 1 and 6;
    Assert isolated at 6; builtin__zip empty at layer 2; six builtins empty at layer 7.
    """
    w = 64
    m = np.zeros((N, 8, w), dtype=bool)
    m[:, :, CORE] = True
    i = {k: n for n, k in enumerate(NAMES)}
    for layer in (1, 3, 5, 7):
        m[i["ast__Break"], layer] = False
        m[i["ast__Break"], layer, [20, 21]] = True
    for layer in (1, 6):
        m[i["ast__ImportFrom"], layer] = False
        m[i["ast__ImportFrom"], layer, [30, 31, 32]] = True
    m[i["ast__Assert"], 6] = False
    m[i["ast__Assert"], 6, 40] = True
    m[i["builtin__zip"], 2] = False
    for b in ("abs", "all", "any", "bool", "dict", "int"):
        m[i[f"builtin__{b}"], 7] = False
    return MaskStack(list(NAMES), m)


def _random_stack(seed: int, width: int = 128) -> MaskStack:
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.05, 0.6, size=(N, 8, 1))
    return MaskStack(list(NAMES), rng.random((N, 8, width)) < density)


# ----------------------------------------------------------------------------- trimmed mean


def test_trimmed_mean_hand_computed_row():
    # Row 0 of a 5x5 matrix: self = 1, others = [0.5, 0.125, 0.375, 0.25] (dyadic: exact in float32).
    j = np.full((5, 5), 0.75, dtype=np.float32)
    j[0] = [1.0, 0.5, 0.125, 0.375, 0.25]
    t = trimmed_means(j, p_values=(0.0, 0.25, 0.3, 0.5, 0.75, 1.0))[:, 0]
    # k = floor(p*4) = 0, 1, 1, 2, 3, 4 largest neighbours dropped; nothing left -> 0.
    assert t.tolist() == [1.25 / 4, 0.75 / 3, 0.75 / 3, 0.375 / 2, 0.125, 0.0]
    assert t.dtype == np.float32


def test_trimmed_mean_drops_floor_p_times_105_for_106_objects():
    # others of row 0 = 1/128 .. 105/128; dropping the top k leaves 1..105-k, mean (106-k)/2/128.
    j = np.zeros((106, 106), dtype=np.float32)
    j[0, 1:] = np.arange(1, 106) / 128
    j[0, 0] = 1.0
    t = trimmed_means(j)[:, 0]
    ks = [0, 5, 10, 26]
    assert t.tolist() == [(106 - k) / 2 / 128 for k in ks]


def _naive_trimmed(j: np.ndarray, p: float, row_order_at_p0: bool) -> np.ndarray:
    # One row at a time, straight from the spec: drop self, sort descending, drop the top k, float32 mean.
    out = []
    for i in range(len(j)):
        others = np.delete(j[i], i)
        k = int(np.floor(p * len(others)))
        kept = others if (k == 0 and row_order_at_p0) else np.sort(others)[::-1][k:]
        out.append(kept.mean() if len(kept) else 0.0)
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("summation", ["sorted", "reference"])
def test_vectorised_trimmed_means_equal_row_by_row(summation):
    rng = np.random.default_rng(3)
    j = (rng.integers(0, 2000, size=(106, 106)) / rng.integers(2000, 4000, size=(106, 106))).astype(np.float32)
    np.fill_diagonal(j, 1.0)
    t = trimmed_means(j, summation=summation)
    for pi, p in enumerate((0.0, 0.05, 0.1, 0.25)):
        assert np.array_equal(t[pi], _naive_trimmed(j, p, summation == "reference"))


def test_population_percentile_counts_self_and_ties():
    v = np.array([0.3, 0.1, 0.1, 0.2], dtype=np.float32)
    assert population_percentile(v).tolist() == [4 / 4, 2 / 4, 2 / 4, 3 / 4]


# ----------------------------------------------------------------------------- planted masks


def test_planted_isolated_concepts_score_exactly():
    scores, detail = relaxed_modularity(_planted())
    expected = {"ast__Break": 3, "ast__ImportFrom": 2, "ast__Assert": 1, "builtin__zip": 1}
    for p in P_COLS:
        got = scores[p]
        assert {k: int(v) for k, v in got[got > 0].items()} == expected, p
    # Sort: p=0.0 desc, p=0.25 desc, ties in name order.
    assert list(scores.index) == ["ast__Break", "ast__ImportFrom", "ast__Assert", "builtin__zip"] + sorted(
        set(NAMES) - set(expected))
    assert list(scores.columns) == ["type"] + P_COLS
    assert scores.loc["builtin__zip", "type"] == "builtin" and scores.loc["ast__Break", "type"] == "ast"


def test_planted_detail_rows():
    _, detail = relaxed_modularity(_planted())
    assert list(detail.columns) == DETAIL_COLUMNS
    assert len(detail) == 8 * N * 4
    # layer-major, then object, then p
    assert detail["layer"].tolist() == sorted(detail["layer"])
    first = detail.iloc[: N * 4]
    assert first["object"].tolist() == [n for n in NAMES for _ in range(4)]
    assert first["p_trim"].tolist() == [0.0, 0.05, 0.1, 0.25] * N

    def row(layer, obj, p):
        r = detail[(detail.layer == layer) & (detail.object == obj) & (detail.p_trim == p)]
        assert len(r) == 1
        return r.iloc[0]

    r = row(3, "ast__Break", 0.0)           # alone at 0: percentile 1/106
    assert (r.observed_trimmed_jaccard, r.percentile, r.significant) == (0.0, round(1 / 106, 4), True)
    r = row(3, "ast__For", 0.0)             # 104 identical neighbours (J=1) and Break (J=0)
    assert (r.observed_trimmed_jaccard, r.percentile, r.significant) == (np.float32(round(104 / 105, 4)), 1.0, False)
    r = row(3, "ast__For", 0.25)            # drops 26 of the ones
    assert r.observed_trimmed_jaccard == np.float32(round(78 / 79, 4))
    r = row(1, "ast__ImportFrom", 0.1)      # Break and ImportFrom tie at 0: 2/106
    assert (r.percentile, r.significant) == (round(2 / 106, 4), True)
    r = row(7, "ast__Break", 0.0)           # tied with six empty masks: 7/106 >= 0.05
    assert (r.observed_trimmed_jaccard, r.percentile, r.significant) == (0.0, round(7 / 106, 4), False)


def test_empty_mask_is_ranked_most_modular():
    # Documented edge case (§8.1): an all-zero Jaccard row has the minimum trimmed mean.
    _, detail = relaxed_modularity(_planted())
    r = detail[(detail.layer == 2) & (detail.object == "builtin__zip")]
    assert r["observed_trimmed_jaccard"].tolist() == [0.0] * 4
    assert r["significant"].all()


def test_six_exact_ties_at_the_bottom_make_nobody_significant():
    # 6 identical masks, disjoint from the rest, at layer 0: they tie exactly at every p, so each
    # percentile is 6/106 >= 0.05. With 5 of them (layer 1), 5/106 < 0.05: all five significant.
    rng = np.random.default_rng(11)
    m = np.zeros((N, 8, 96), dtype=bool)
    m[:, :, :64] = rng.random((N, 8, 64)) < 0.5          # a shared random population on channels 0..63
    group = [NAMES[i] for i in (4, 17, 33, 60, 71, 99)]
    idx = [NAMES.index(g) for g in group]
    m[idx, 0] = False
    m[idx, 0, 70:80] = rng.random(10) < 0.6               # the same mask for all six, disjoint from the rest
    m[idx[:5], 1] = False
    m[idx[:5], 1, 80:90] = True
    _, detail = relaxed_modularity(MaskStack(list(NAMES), m))
    l0 = detail[(detail.layer == 0) & detail.object.isin(group)]
    assert l0.groupby("p_trim")["observed_trimmed_jaccard"].nunique().eq(1).all()
    assert (l0["percentile"] == round(6 / 106, 4)).all() and not l0["significant"].any()
    assert not detail[detail.layer == 0]["significant"].any()
    l1 = detail[(detail.layer == 1) & detail.object.isin(group[:5])]
    assert (l1["percentile"] == round(5 / 106, 4)).all() and l1["significant"].all()


def test_identical_masks_tie_exactly_under_sorted_summation():
    # Two identical masks have the same multiset of neighbour similarities; the default summation
    # is order-free, so their float32 trimmed means are equal at every layer and p.
    s = _random_stack(5)
    a, b = NAMES.index("builtin__len"), NAMES.index("builtin__list")
    s.masks[b] = s.masks[a]
    _, detail = relaxed_modularity(s)
    pa = detail[detail.object == "builtin__len"].reset_index(drop=True)
    pb = detail[detail.object == "builtin__list"].reset_index(drop=True)
    assert pa["observed_trimmed_jaccard"].equals(pb["observed_trimmed_jaccard"])
    assert pa["percentile"].equals(pb["percentile"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_at_most_five_significant_per_layer_and_p(seed):
    scores, detail = relaxed_modularity(_random_stack(seed))
    per_cell = detail.groupby(["layer", "p_trim"])["significant"].sum()
    assert (per_cell <= 5).all()
    assert (scores[P_COLS].sum() <= 8 * 5).all()
    # Where the 106 observed values are distinct, exactly the 5 smallest are significant.
    for (layer, p), cell in detail.groupby(["layer", "p_trim"]):
        if cell["observed_trimmed_jaccard"].nunique() == N:
            smallest5 = set(cell.nsmallest(5, "observed_trimmed_jaccard")["object"])
            assert set(cell[cell.significant]["object"]) == smallest5


def test_scores_sum_detail_significance():
    scores, detail = relaxed_modularity(_random_stack(7))
    for p, col in zip((0.0, 0.05, 0.1, 0.25), P_COLS):
        counts = detail[detail.p_trim == p].groupby("object")["significant"].sum()
        assert scores[col].to_dict() == counts.to_dict()


def test_ranking_with_ties():
    scores, _ = relaxed_modularity(_planted())
    r = ranking_with_ties(scores, "p=0.0").set_index("object")
    assert (r.loc["ast__Break", ["rank_min", "rank_max", "n_tied"]] == [1, 1, 1]).all()
    assert (r.loc["ast__ImportFrom", ["rank_min", "rank_max"]] == [2, 2]).all()
    for o in ("ast__Assert", "builtin__zip"):
        assert (r.loc[o, ["score", "rank_min", "rank_max", "n_tied"]] == [1, 3, 4, 2]).all()
    assert (r.loc["ast__For", ["score", "rank_min", "rank_max", "n_tied"]] == [0, 5, 106, 102]).all()
    with pytest.raises(KeyError):
        ranking_with_ties(scores, "p=0.5")


def test_build_modularity_tables_writes_release_csvs(tmp_path):
    stack = _planted()
    empty_pairs = MaskStack([], np.zeros((0, 8, stack.width), dtype=bool))
    om = ObjectMasks(0.5, 0.8, empty_pairs, stack, [], [])
    layout.write_object_masks(tmp_path / layout.object_masks_name(0.5, 0.8), om)
    build_modularity_tables(tmp_path)
    text = (tmp_path / layout.MODULARITY_SCORES).read_text()
    assert text.splitlines()[0] == ",type,p=0.0,p=0.05,p=0.1,p=0.25"
    assert text.splitlines()[1] == "ast__Break,ast,3,3,3,3"
    back = pd.read_csv(tmp_path / layout.MODULARITY_SCORES, index_col=0)
    assert back.loc["ast__ImportFrom"].tolist() == ["ast", 2, 2, 2, 2]
    detail = pd.read_csv(tmp_path / layout.MODULARITY_DETAIL)
    assert list(detail.columns) == DETAIL_COLUMNS and len(detail) == 3392
    assert detail["significant"].dtype == bool
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_build_modularity_tables_missing_file_names_it(tmp_path):
    with pytest.raises(layout.AtlasFileError, match="13_object_masks_eps0.5_cons0.8.h5"):
        build_modularity_tables(tmp_path)
    assert not (tmp_path / layout.MODULARITY_SCORES).exists()


# ----------------------------------------------------------------------------- notebook 4


def test_notebook4_planted():
    scores, detail = notebook4_modularity(_planted())
    d3 = detail[detail.layer == 3].set_index("object")
    # Layer 3: selective channels = the 10 core ones (used by 105 of 106) + Break's 2.
    assert (d3["n_selective"] == 12).all()
    assert d3.loc["ast__Break", "mean_J_to_others"] == 0.0
    assert d3.loc["ast__For", "mean_J_to_others"] == pytest.approx(104 / 105, abs=1e-15)
    # The bootstrap: 500 draws of a concept index from RandomState(42); p_low = share of draws <= own.
    rng = np.random.RandomState(42)
    draws = np.array([rng.randint(N) for _ in range(500)])
    assert d3.loc["ast__Break", "p_low"] == np.mean(draws == NAMES.index("ast__Break"))
    assert d3.loc["ast__Break", "distinctive"]
    assert d3.loc["ast__For", "p_low"] == 1.0 and not d3.loc["ast__For", "distinctive"]
    # Layer 0: all masks identical -> no selective channel -> 0 / p = 1 for everyone.
    d0 = detail[detail.layer == 0]
    assert (d0["n_selective"] == 0).all() and (d0["mean_J_to_others"] == 0).all() and (d0["p_low"] == 1).all()
    s = scores.set_index("object")
    assert s.loc["ast__Break", "modularity_score"] >= 3 and s.loc["ast__For", "modularity_score"] == 0
    assert scores["modularity_score"].is_monotonic_decreasing
    assert list(scores.columns) == ["object", "type", "modularity_score", "mean_J_overall"]
