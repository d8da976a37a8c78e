"""The 3A evaluation quantities and the survival counts (ALGORITHMS.md §11; PAPER_CLAIMS §2, §6–§8).

Pure functions over `layout.ObjectMasks` (one `13_object_masks_*` file):

    layer_evolution      mean |mask| per layer over pair masks, AST universals, builtin universals (L01–L04)
    entanglement_index   E_I = |P ∧ ¬(U_ast ∨ U_blt)| / |P| per pair at one layer, 0 if |P| = 0  (E01–E04)
    ockham_index         O_I = 1 − Jaccard over AST×AST universal pairs at one layer              (J04)
    jaccard_upper_stats  mean / max / count > 0.5 over a stored `/metrics` matrix's upper triangle (J02–J03)
    emptiness            empty universal and pair masks, per layer and per concept                (S01–S04)
    unmarginalised_check the atomicity six's universal == their `_isolated_` pair mask             (A05)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from builder_utils import layout
from builder_utils.concepts import ATOMICITY_AST, ISOLATED, KEYWORD_MAP, concept_key, pair_key, split_pair_key
from builder_utils.layout import MaskStack, ObjectMasks
from builder_utils.modularity import jaccard_matrices

REFERENCE_LAYER = layout.JACCARD_LAYER      # 3A reports E_I, O_I and the heatmaps at layer 4
STRONG_OVERLAP = 0.5                         # "pairs with J > 0.5"


def _type_rows(universals: MaskStack, kind: str) -> np.ndarray:
    return np.array([k.startswith(f"{kind}__") for k in universals.keys], dtype=bool)


def layer_evolution(om: ObjectMasks) -> pd.DataFrame:
    """Mean circuit size per layer: index `layer`, columns pair_sizes, ast_sizes, builtin_sizes (float64).

    A series with no masks gives 0.0, as 3A does.
    """
    def mean_sizes(masks: np.ndarray) -> np.ndarray:
        if masks.shape[0] == 0:
            return np.zeros(masks.shape[1])
        return masks.sum(axis=2).mean(axis=0)      # integer sums: the float64 mean is exact-then-rounded

    u = om.universals
    return pd.DataFrame({
        "pair_sizes": mean_sizes(om.pairs.masks),
        "ast_sizes": mean_sizes(u.masks[_type_rows(u, "ast")]),
        "builtin_sizes": mean_sizes(u.masks[_type_rows(u, "builtin")]),
    }, index=pd.RangeIndex(u.n_layers, name="layer"))


def entanglement_index(om: ObjectMasks, layer: int = REFERENCE_LAYER) -> pd.DataFrame:
    """E_I for every pair at `layer`: the share of the pair's channels its two universals do not explain.

    Columns: pair, ast_node, builtin_obj, E_I, pair_size; rows in pair-key order. E_I is 0 for
    an empty pair mask, and 0 by construction for the six `X___isolated_` pairs (their universal
    *is* the pair mask).
    """
    u = om.universals.index()
    rows = []
    for i, key in enumerate(om.pairs.keys):
        ast_node, builtin = split_pair_key(key)
        ua, ub = concept_key("ast", ast_node), concept_key("builtin", builtin)
        for c in (ua, ub):
            if c not in u:
                raise ValueError(f"pair {key!r} has no universal mask {c!r} in the object mask file")
        p = om.pairs.masks[i, layer]
        explained = om.universals.masks[u[ua], layer] | om.universals.masks[u[ub], layer]
        size = int(p.sum())
        unexplained = int((p & ~explained).sum())
        rows.append((key, ast_node, builtin, unexplained / size if size else 0.0, size))
    return pd.DataFrame(rows, columns=["pair", "ast_node", "builtin_obj", "E_I", "pair_size"])


def ockham_index(universals: MaskStack, layer: int = REFERENCE_LAYER, kind: str = "ast") -> pd.DataFrame:
    """O_I = 1 − Jaccard for every unordered pair of `kind` universals at `layer` (903 for 43 AST nodes).

    Columns a, b (bare names, a < b in sorted order), O_I; Jaccard is 0 when both masks are empty.
    """
    rows_mask = _type_rows(universals, kind)
    names = [k.split("__", 1)[1] for k, m in zip(universals.keys, rows_mask) if m]
    j = jaccard_matrices(universals.masks[rows_mask][:, layer:layer + 1, :])[0]
    ia, ib = np.triu_indices(len(names), k=1)
    return pd.DataFrame({"a": [names[i] for i in ia], "b": [names[i] for i in ib], "O_I": 1.0 - j[ia, ib]})


def jaccard_upper_stats(matrix: np.ndarray, threshold: float = STRONG_OVERLAP) -> dict:
    """Mean, max and the count of values > threshold over the strict upper triangle of a square matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {matrix.shape}")
    upper = matrix[np.triu_indices_from(matrix, k=1)]
    if upper.size == 0:
        raise ValueError("matrix has no off-diagonal entries")
    return {"n_pairs": int(upper.size), "mean": float(upper.mean()), "max": float(upper.max()),
            f"n_gt_{threshold}": int((upper > threshold).sum())}


def metrics_jaccard_stats(om: ObjectMasks, threshold: float = STRONG_OVERLAP) -> pd.DataFrame:
    """`jaccard_upper_stats` of the file's stored `/metrics` matrices; index ast, builtin."""
    stats = {}
    for kind, m in (("ast", om.jaccard_ast), ("builtin", om.jaccard_builtin)):
        if m is None:
            raise ValueError(f"object mask file (ε={om.epsilon}, C={om.consistency}) has no "
                             f"/metrics/jaccard_{kind}_matrix")
        stats[kind] = jaccard_upper_stats(m, threshold)
    return pd.DataFrame.from_dict(stats, orient="index")


def emptiness(om: ObjectMasks, testable=KEYWORD_MAP) -> dict:
    """Empty-mask counts of one setting (S01–S04).

    n_concepts_never_nonempty      concepts empty at every layer (the locked S01 test wants 0)
    n_empty_universal_cells        (concept, layer) cells with |A| = 0, all concepts
    n_empty_ast_cells / _builtin_  the same, split by type
    n_empty_testable_cells         the same over the keyword (testable) concepts present (S04: 0/464 at 0.001/0.8)
    n_empty_pair_masks             empty pair masks over all (pair, layer) cells (S03: 0/10,208 at 0.001/0.8)
    """
    u = om.universals
    empty_u = ~u.masks.any(axis=2)                              # (concepts, layers)
    ast, blt = _type_rows(u, "ast"), _type_rows(u, "builtin")
    test = np.array([k in testable for k in u.keys], dtype=bool)
    empty_p = ~om.pairs.masks.any(axis=2)
    return {
        "epsilon": om.epsilon, "consistency": om.consistency,
        "n_concepts": len(u.keys), "n_ast": int(ast.sum()), "n_builtin": int(blt.sum()),
        "n_concepts_never_nonempty": int(empty_u.all(axis=1).sum()),
        "n_universal_cells": int(empty_u.size), "n_empty_universal_cells": int(empty_u.sum()),
        "n_empty_ast_cells": int(empty_u[ast].sum()), "n_empty_builtin_cells": int(empty_u[blt].sum()),
        "n_testable": int(test.sum()), "n_testable_cells": int(empty_u[test].size),
        "n_empty_testable_cells": int(empty_u[test].sum()),
        "n_pairs": len(om.pairs.keys), "n_pair_cells": int(empty_p.size), "n_empty_pair_masks": int(empty_p.sum()),
    }


def emptiness_by_setting(data_dir: os.PathLike | str, settings=layout.SETTINGS) -> pd.DataFrame:
    """`emptiness` for every (ε, C) object mask file in `data_dir`, one row per setting, ε-major."""
    data_dir = Path(data_dir)
    return pd.DataFrame([emptiness(layout.read_object_masks(data_dir / layout.object_masks_name(e, c)))
                         for e, c in settings])


def unmarginalised_check(om: ObjectMasks) -> pd.DataFrame:
    """A05: is each atomicity universal its `X___isolated_` pair mask, and `_isolated_` their AND?

    One row per check with `equal` True/False at every layer.
    """
    u, p = om.universals.index(), om.pairs.index()
    rows, isolated_pairs = [], []
    for node in ATOMICITY_AST:
        c, pk = concept_key("ast", node), pair_key(node, ISOLATED)
        if c not in u or pk not in p:
            raise ValueError(f"object mask file lacks {c!r} or pair {pk!r}")
        isolated_pairs.append(om.pairs.masks[p[pk]])
        rows.append((c, pk, bool((om.universals.masks[u[c]] == om.pairs.masks[p[pk]]).all())))
    iso = concept_key("builtin", ISOLATED)
    if iso in u:
        anded = np.logical_and.reduce(isolated_pairs)
        rows.append((iso, "AND of the six", bool((om.universals.masks[u[iso]] == anded).all())))
    return pd.DataFrame(rows, columns=["universal", "compared_with", "equal"])
