"""Figure 1: Ward clustering of the universal masks and the atomicity test (ALGORITHMS.md §10).

At one layer, the concepts with a non-empty universal mask are clustered with scipy's Ward
linkage on the distance 1 − Jaccard (Ward on a non-Euclidean distance, as released), and the
tree is cut into k flat clusters. The paper's test: do the six "atomicity" AST nodes
{Assert, Break, Continue, Import, ImportFrom, Pass} land in one cluster (L3, k = 4)?

Note (PAPER_CLAIMS F16/F17): the released figure clusters the full universal masks, not the
concept-only parts, and the six are exactly the concepts whose universal mask is a single,
un-marginalised pair mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import dendrogram, fcluster, linkage
from scipy.spatial.distance import squareform

from builder_utils.concepts import ATOMICITY_AST, concept_key
from builder_utils.layout import MaskStack
from builder_utils.modularity import jaccard_matrices

ATOMICITY: tuple[str, ...] = tuple(concept_key("ast", n) for n in ATOMICITY_AST)
FIGURE1_LAYER = 3
FIGURE1_K = 4


def pairwise_jaccard(masks: np.ndarray, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Jaccard matrix of `(n, width)` boolean masks, rows/columns in sorted name order, float64.

    Off-diagonal `|a∩b| / |a∪b|` (0 when both are empty); diagonal 1 for a non-empty mask, else 0.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[0] != len(names):
        raise ValueError(f"masks shape {masks.shape} does not match {len(names)} names")
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    masks = masks[order]
    j = jaccard_matrices(masks[:, None, :])[0]
    np.fill_diagonal(j, masks.any(axis=1).astype(np.float64))
    return [names[i] for i in order], j


@dataclass
class ClusterResult:
    """A Ward tree at one layer, cut into at most k flat clusters."""

    layer: int
    k: int
    names: list[str]            # the concepts kept (non-empty at `layer`), sorted
    dropped: list[str]          # concepts with an empty mask at `layer`
    linkage: np.ndarray         # scipy (n−1, 4) linkage matrix
    cluster_ids: np.ndarray     # fcluster ids (1..k), aligned with `names`
    group: tuple[str, ...]      # the concepts tested for co-clustering (the atomicity six)

    @property
    def n_kept(self) -> int:
        return len(self.names)

    def clusters(self) -> dict[str, int]:
        return dict(zip(self.names, self.cluster_ids.tolist()))

    def members(self, cluster_id: int) -> list[str]:
        return [n for n, c in zip(self.names, self.cluster_ids) if c == cluster_id]

    @property
    def group_present(self) -> list[str]:
        kept = set(self.names)
        return [g for g in self.group if g in kept]

    @property
    def group_cluster_ids(self) -> list[int]:
        """Distinct cluster ids holding the (kept) group members, sorted."""
        c = self.clusters()
        return sorted({c[g] for g in self.group_present})

    @property
    def group_members(self) -> list[str]:
        """Everything in the cluster(s) that hold the group, sorted (A02: the six + Raise + _isolated_)."""
        return sorted(n for cid in self.group_cluster_ids for n in self.members(cid))

    @property
    def group_together(self) -> bool:
        """All group members kept and in one cluster (the locked A01 test)."""
        return len(self.group_present) == len(self.group) and len(self.group_cluster_ids) == 1


def ward_clusters(universals: MaskStack, layer: int = FIGURE1_LAYER, k: int = FIGURE1_K,
                  group: Iterable[str] = ATOMICITY) -> ClusterResult:
    """Drop empty masks at `layer`, Ward-link on 1 − Jaccard, cut with fcluster(t=k, 'maxclust')."""
    if not 0 <= layer < universals.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{universals.n_layers - 1}")
    at_layer = universals.masks[:, layer, :]
    nonempty = at_layer.any(axis=1)
    kept = [n for n, keep in zip(universals.keys, nonempty) if keep]
    dropped = [n for n, keep in zip(universals.keys, nonempty) if not keep]
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} non-empty universal mask(s) at layer {layer}; need >= 2 to cluster")
    if not 1 <= k <= len(kept):
        raise ValueError(f"k = {k} must be between 1 and the {len(kept)} concepts kept at layer {layer}")
    names, j = pairwise_jaccard(at_layer[nonempty], kept)
    distance = 1.0 - j
    np.fill_diagonal(distance, 0.0)
    z = linkage(squareform(distance, checks=False), method="ward")
    ids = fcluster(z, t=k, criterion="maxclust")
    return ClusterResult(layer, k, names, dropped, z, ids, tuple(group))


def scan_layers_k(universals: MaskStack, layers: Iterable[int] = range(8), ks: Iterable[int] = range(2, 9),
                  group: Iterable[str] = ATOMICITY) -> pd.DataFrame:
    """Where does the group co-cluster? One row per (layer, k) (A03).

    Columns: layer, k, n_kept, n_group_kept, n_group_clusters, together, cluster_size (size of
    the cluster(s) holding the group), members (';'-joined).
    """
    group = tuple(group)
    rows = []
    for layer in layers:
        for k in ks:
            r = ward_clusters(universals, layer, k, group)
            members = r.group_members
            rows.append((layer, k, r.n_kept, len(r.group_present), len(r.group_cluster_ids), r.group_together,
                         len(members), ";".join(members)))
    return pd.DataFrame(rows, columns=["layer", "k", "n_kept", "n_group_kept", "n_group_clusters", "together",
                                       "cluster_size", "members"])


def plot_dendrogram(result: ClusterResult, ax=None, highlight: Iterable[str] | None = None,
                    color_threshold: float | None = None, title: str | None = None,
                    figsize: tuple[float, float] = (14, 5)):
    """Render Figure 1: the Ward dendrogram, leaf labels rotated 90° at font 8, `highlight` in bold red.

    `color_threshold=None` keeps scipy's default (0.7 × the largest merge height), as released.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt     # plotting only: keep the analysis importable without a backend

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    dendrogram(result.linkage, labels=result.names, leaf_rotation=90, leaf_font_size=8,
               color_threshold=color_threshold, ax=ax)
    marked = set(result.group if highlight is None else highlight)
    for label in ax.get_xticklabels():
        if label.get_text() in marked:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    ax.set_ylabel("Ward distance on 1 − Jaccard")
    ax.set_title(title or f"Ward clustering of universal masks at L{result.layer} "
                          f"({result.n_kept} non-empty concepts; k = {result.k} cut)")
    fig.tight_layout()
    return fig
