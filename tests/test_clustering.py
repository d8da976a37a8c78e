"""Figure 1 clustering (ALGORITHMS.md §10) on masks with planted cluster structure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from builder_utils.clustering import (ATOMICITY, pairwise_jaccard, plot_dendrogram, scan_layers_k,  # noqa: E402
                                      ward_clusters)
from builder_utils.concepts import concept_keys  # noqa: E402
from builder_utils.layout import MaskStack  # noqa: E402

NAMES = concept_keys()
EIGHT = sorted(ATOMICITY + ("ast__Raise", "builtin___isolated_"))


def test_pairwise_jaccard_hand_example():
    masks = np.zeros((3, 4), dtype=bool)
    masks[1, [0, 1]] = True     # "a"; row 0 ("c") stays empty
    masks[2, [1, 2]] = True     # "b"
    names, j = pairwise_jaccard(masks, ["c", "a", "b"])
    assert names == ["a", "b", "c"]
    assert j.dtype == np.float64
    expected = np.array([[1.0, 1 / 3, 0.0],
                         [1 / 3, 1.0, 0.0],
                         [0.0, 0.0, 0.0]])      # empty vs empty: 0, and its diagonal is 0
    assert np.array_equal(j, expected)


def _planted(groups: list[list[str]], empty: list[str] = (), width: int = 400, seed: int = 0) -> MaskStack:
    """At layer 0, group g's members = a private 80-channel prototype with ~10 % of it flipped off
    per member; concepts outside every group get a random quarter of a shared 'rest' block.
    Within-group Jaccard ≈ 0.8, across groups 0."""
    rng = np.random.default_rng(seed)
    m = np.zeros((len(NAMES), 2, width), dtype=bool)
    idx = {k: i for i, k in enumerate(NAMES)}
    grouped = {n for g in groups for n in g}
    for gi, members in enumerate(groups):
        block = np.arange(gi * 80, (gi + 1) * 80)
        for name in members:
            m[idx[name], 0, block] = rng.random(80) > 0.1
    rest = np.arange(len(groups) * 80, width)
    for name in NAMES:
        if name not in grouped:
            m[idx[name], 0, rest] = rng.random(len(rest)) < 0.25
    for name in empty:
        m[idx[name], 0] = False
    m[:, 1] = m[:, 0]
    return MaskStack(list(NAMES), m)


def test_four_planted_clusters_are_recovered():
    others = [n for n in NAMES if n not in EIGHT]
    groups = [EIGHT, others[:20], others[20:50], others[50:]]
    result = ward_clusters(_planted(groups[:3]), layer=0, k=4)
    got = {}
    for name, cid in result.clusters().items():
        got.setdefault(cid, set()).add(name)
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, groups))
    assert result.group_together
    assert len(result.group_cluster_ids) == 1
    assert result.group_members == EIGHT
    assert result.n_kept == 106 and result.dropped == []
    assert result.linkage.shape == (105, 4)


def test_empty_masks_are_dropped_and_reported():
    empty = ["builtin__zip", "ast__Yield", "builtin__abs"]
    others = [n for n in NAMES if n not in EIGHT and n not in empty]
    result = ward_clusters(_planted([EIGHT, others[:30]], empty=empty), layer=0, k=3)
    assert result.dropped == sorted(empty)
    assert result.n_kept == 103 and not set(empty) & set(result.names)
    assert result.names == sorted(result.names)
    assert result.group_members == EIGHT


def test_split_group_is_reported():
    # The six in two far-apart groups of three: at k = 3 they occupy two clusters.
    six = list(ATOMICITY)
    result = ward_clusters(_planted([six[:3], six[3:]]), layer=0, k=3)
    assert not result.group_together
    assert len(result.group_cluster_ids) == 2
    assert result.group_members == sorted(six)


def test_scan_layers_k_table():
    others = [n for n in NAMES if n not in EIGHT]
    table = scan_layers_k(_planted([EIGHT, others[:20], others[20:50]]), layers=[0, 1], ks=[2, 4])
    assert list(table[["layer", "k"]].itertuples(index=False, name=None)) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    k4 = table[table.k == 4]
    assert k4["together"].all() and (k4["cluster_size"] == 8).all() and (k4["n_group_clusters"] == 1).all()
    assert k4["members"].iloc[0] == ";".join(EIGHT)
    assert (table["n_kept"] == 106).all() and (table["n_group_kept"] == 6).all()


def test_bad_arguments_raise():
    s = _planted([EIGHT])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        ward_clusters(s, layer=5)
    with pytest.raises(ValueError, match="k = 107"):
        ward_clusters(s, layer=0, k=107)
    s.masks[1:, 0] = False
    with pytest.raises(ValueError, match="need >= 2"):
        ward_clusters(s, layer=0, k=1)


def test_plot_dendrogram_highlights_the_six():
    result = ward_clusters(_planted([EIGHT]), layer=0, k=4)
    fig = plot_dendrogram(result)
    ax = fig.axes[0]
    labels = {t.get_text(): t for t in ax.get_xticklabels()}
    assert set(labels) == set(NAMES)
    assert all(labels[n].get_color() == "tab:red" for n in ATOMICITY)
    assert labels["ast__For"].get_color() != "tab:red"
    assert all(t.get_rotation() == 90 and t.get_fontsize() == 8 for t in labels.values())
    import matplotlib.pyplot as plt
    plt.close(fig)
