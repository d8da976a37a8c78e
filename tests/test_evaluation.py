"""The 3A quantities and emptiness counts on a hand-built object mask set (answers worked out by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from builder_utils import layout
from builder_utils.evaluation import (emptiness, emptiness_by_setting, entanglement_index, jaccard_upper_stats,
                                      layer_evolution, metrics_jaccard_stats, ockham_index, unmarginalised_check)
from builder_utils.layout import MaskStack, ObjectMasks

W = 8


def _mask(*channels) -> np.ndarray:
    m = np.zeros(W, dtype=bool)
    m[list(channels)] = True
    return m


def _stack(spec: dict[str, list[np.ndarray]]) -> MaskStack:
    keys = sorted(spec)
    return MaskStack(keys, np.stack([np.stack(spec[k]) for k in keys]))


def _object_masks() -> ObjectMasks:
    """Two layers. Layer 1 is the 'reference' layer for E_I / O_I in these tests."""
    universals = _stack({
        "ast__For":          [_mask(0, 1), _mask(0)],
        "ast__If":           [_mask(0, 1, 2, 3), _mask(0, 1)],
        "ast__Break":        [_mask(5), _mask(6, 7)],
        "builtin__len":      [_mask(4), _mask(1)],
        "builtin__list":     [_mask(), _mask(2)],          # empty at layer 0
        "builtin___isolated_": [_mask(5), _mask(6, 7)],
    })
    pairs = _stack({
        "For__len":          [_mask(0, 1, 4, 6), _mask(0, 1, 2, 3)],
        "For__list":         [_mask(0, 1, 2), _mask()],    # empty at layer 1
        "If__len":           [_mask(0, 1, 2, 3, 4, 5), _mask(0, 1, 5)],
        "Break___isolated_": [_mask(5), _mask(6, 7)],
    })
    return ObjectMasks(0.5, 0.8, pairs, universals, ["Break", "For", "If"], ["_isolated_", "len", "list"])


def test_layer_evolution_by_hand():
    le = layer_evolution(_object_masks())
    # layer 0: pairs 4, 3, 6, 1 -> 14/4; AST universals For 2, If 4, Break 1 -> 7/3; builtins 1, 0, 1 -> 2/3
    # layer 1: pairs 4, 0, 3, 2 -> 9/4;  AST 1, 2, 2 -> 5/3;  builtins 1, 1, 2 -> 4/3
    assert le.index.name == "layer" and list(le.columns) == ["pair_sizes", "ast_sizes", "builtin_sizes"]
    assert le.loc[0].tolist() == [14 / 4, 7 / 3, 2 / 3]
    assert le.loc[1].tolist() == [9 / 4, 5 / 3, 4 / 3]


def test_entanglement_index_by_hand():
    ei = entanglement_index(_object_masks(), layer=1).set_index("pair")
    # For__len L1: P = {0,1,2,3}, U_For ∪ U_len = {0} ∪ {1} -> unexplained {2,3}: 2/4
    # For__list L1: empty pair -> 0
    # If__len L1: P = {0,1,5}, {0,1} ∪ {1} -> unexplained {5}: 1/3
    # Break___isolated_: pair == its universal -> 0
    assert ei["E_I"].to_dict() == {"Break___isolated_": 0.0, "For__len": 0.5, "For__list": 0.0, "If__len": 1 / 3}
    assert ei["pair_size"].to_dict() == {"Break___isolated_": 2, "For__len": 4, "For__list": 0, "If__len": 3}
    assert ei.loc["If__len", "ast_node"] == "If" and ei.loc["If__len", "builtin_obj"] == "len"
    ei0 = entanglement_index(_object_masks(), layer=0).set_index("pair")
    # For__len L0: P = {0,1,4,6}, {0,1} ∪ {4} -> {6}: 1/4
    assert ei0.loc["For__len", "E_I"] == 0.25


def test_entanglement_index_missing_universal_is_an_error():
    om = _object_masks()
    om.pairs = _stack({"While__len": [_mask(0), _mask(0)]})
    with pytest.raises(ValueError, match="ast__While"):
        entanglement_index(om, layer=0)


def test_ockham_index_by_hand():
    oi = ockham_index(_object_masks().universals, layer=1)
    # AST universals at L1, sorted: Break {6,7}, For {0}, If {0,1}
    assert oi[["a", "b"]].values.tolist() == [["Break", "For"], ["Break", "If"], ["For", "If"]]
    assert oi["O_I"].tolist() == [1.0, 1.0, 0.5]
    blt = ockham_index(_object_masks().universals, layer=0, kind="builtin")
    # builtins at L0: _isolated_ {5}, len {4}, list {} -> all disjoint (empty vs anything: J = 0)
    assert blt["O_I"].tolist() == [1.0, 1.0, 1.0]


def test_jaccard_upper_stats_by_hand():
    m = np.array([[1.0, 0.2, 0.6, 0.9],
                  [0.2, 1.0, 0.5, 0.1],
                  [0.6, 0.5, 1.0, 0.7],
                  [0.9, 0.1, 0.7, 1.0]])
    s = jaccard_upper_stats(m)
    assert s == {"n_pairs": 6, "mean": pytest.approx(3.0 / 6), "max": 0.9, "n_gt_0.5": 3}   # 0.5 itself is not > 0.5
    om = _object_masks()
    om.jaccard_ast, om.jaccard_builtin = m, m[:3, :3]
    table = metrics_jaccard_stats(om)
    assert table.loc["builtin", "n_pairs"] == 3 and table.loc["builtin", "max"] == 0.6
    om.jaccard_builtin = None
    with pytest.raises(ValueError, match="jaccard_builtin_matrix"):
        metrics_jaccard_stats(om)


def test_emptiness_by_hand():
    e = emptiness(_object_masks(), testable={"ast__For", "builtin__list", "ast__Break"})
    assert e["n_concepts"] == 6 and e["n_ast"] == 3 and e["n_builtin"] == 3
    assert e["n_concepts_never_nonempty"] == 0
    assert e["n_universal_cells"] == 12 and e["n_empty_universal_cells"] == 1
    assert e["n_empty_ast_cells"] == 0 and e["n_empty_builtin_cells"] == 1
    assert e["n_testable"] == 3 and e["n_testable_cells"] == 6 and e["n_empty_testable_cells"] == 1
    assert e["n_pair_cells"] == 8 and e["n_empty_pair_masks"] == 1


def test_emptiness_by_setting_reads_files(tmp_path):
    om = _object_masks()
    settings = [(0.001, 0.8), (0.5, 0.8)]
    for eps, cons in settings:
        om.epsilon, om.consistency = eps, cons
        layout.write_object_masks(tmp_path / layout.object_masks_name(eps, cons), om)
    table = emptiness_by_setting(tmp_path, settings)
    assert table[["epsilon", "consistency"]].values.tolist() == [[0.001, 0.8], [0.5, 0.8]]
    assert table["n_empty_pair_masks"].tolist() == [1, 1]
    with pytest.raises(layout.AtlasFileError, match="eps0.1_cons0.2"):
        emptiness_by_setting(tmp_path, [(0.1, 0.2)])


def test_unmarginalised_check():
    from builder_utils.concepts import ATOMICITY_AST
    keys_u = [f"ast__{n}" for n in ATOMICITY_AST] + ["builtin___isolated_"]
    rng = np.random.default_rng(0)
    pair = rng.random((6, 2, W)) < 0.6
    universals = MaskStack(sorted(keys_u), np.zeros((7, 2, W), dtype=bool))
    pairs = MaskStack([f"{n}___isolated_" for n in ATOMICITY_AST], pair)
    ui = universals.index()
    for i, n in enumerate(ATOMICITY_AST):
        universals.masks[ui[f"ast__{n}"]] = pair[i]
    universals.masks[ui["builtin___isolated_"]] = pair.all(axis=0)
    om = ObjectMasks(0.5, 0.8, pairs, universals, list(ATOMICITY_AST), ["_isolated_"])
    table = unmarginalised_check(om)
    assert len(table) == 7 and table["equal"].all()
    universals.masks[ui["ast__Pass"], 1, 0] ^= True
    table = unmarginalised_check(om).set_index("universal")
    assert not table.loc["ast__Pass", "equal"] and table["equal"].sum() == 6
    assert isinstance(table, pd.DataFrame)
