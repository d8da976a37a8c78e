"""Token independence (5B, ALGORITHMS.md §9) on planted universal / token-checker masks with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from builder_utils import layout
from builder_utils.concepts import KEYWORD_MAP, TOKENLESS, concept_keys
from builder_utils.layout import CheckerMasks, MaskStack, ObjectMasks
from builder_utils.token_independence import (DETAIL_COLUMNS, SUMMARY_COLUMNS, build_token_independence_tables,
                                              group_means, high_token_layers, no_keyword_table,
                                              token_independence_detail, token_independence_summary)

W, L = 32, 8
NAMES = concept_keys()
TESTED = sorted(k for k in KEYWORD_MAP if k != "builtin__print")      # print has no checker mask
SPECIAL = {"ast__Break", "ast__Import", "ast__Pass", "builtin__len"}


def _channels(*idx) -> np.ndarray:
    m = np.zeros(W, dtype=bool)
    m[list(idx)] = True
    return m


def _planted() -> tuple[MaskStack, MaskStack]:
    """Default: A = {0..9}, B = {5..14}  ->  A_only 5, A_and_B 5, B_only 5 (fractions 0.5 / 0.5). Special:

    Break   A = {0..9}, B = {0..l-1} at layer l   -> A_only 10-l, A_and_B l, B_only 0
    Import  A empty at layers 0-3, {0..3} at 4-7; B = {0, 1}
    Pass    A = {0, 1, 2}, B = {0}                 -> 2/3 and 1/3
    len     default, except B = A = {0..9} at layers 2 and 5 (token_fraction 1)
    """
    ua = np.zeros((len(NAMES), L, W), dtype=bool)
    for i, name in enumerate(NAMES):
        ua[i, :, :10] = True
    chk_keys = list(TESTED)
    cb = np.zeros((len(chk_keys), L, W), dtype=bool)
    cb[:, :, 5:15] = True
    u, c = {k: i for i, k in enumerate(NAMES)}, {k: i for i, k in enumerate(chk_keys)}
    for l in range(L):
        cb[c["ast__Break"], l] = _channels(*range(l))
        ua[u["ast__Import"], l] = _channels(*range(4)) if l >= 4 else _channels()
        cb[c["ast__Import"], l] = _channels(0, 1)
        ua[u["ast__Pass"], l] = _channels(0, 1, 2)
        cb[c["ast__Pass"], l] = _channels(0)
    for l in (2, 5):
        cb[c["builtin__len"], l] = _channels(*range(10))
    return MaskStack(list(NAMES), ua), MaskStack(chk_keys, cb)


def test_detail_schema_order_and_planted_counts():
    universal, checker = _planted()
    d = token_independence_detail(universal, checker)
    assert list(d.columns) == DETAIL_COLUMNS
    assert len(d) == 57 * 8                                        # 58 keyword concepts minus print
    assert d["object"].tolist() == [o for o in TESTED for _ in range(L)]
    assert d["layer"].tolist() == list(range(L)) * 57
    assert d.loc[d.object == "ast__ImportFrom", "keyword"].unique().tolist() == ["from"]
    assert set(d.loc[d.object.str.startswith("ast__"), "type"]) == {"ast"}
    assert set(d.loc[d.object.str.startswith("builtin__"), "type"]) == {"builtin"}

    by = d.set_index(["object", "layer"])
    row = by.loc[("builtin__sum", 3)]
    assert row[["A_size", "B_size", "A_only", "A_and_B", "B_only"]].tolist() == [10, 10, 5, 5, 5]
    assert (row["concept_fraction"], row["token_fraction"]) == (0.5, 0.5)
    for l in range(L):
        row = by.loc[("ast__Break", l)]
        assert row[["A_size", "B_size", "A_only", "A_and_B", "B_only"]].tolist() == [10, l, 10 - l, l, 0]
        assert row["concept_fraction"] == (10 - l) / 10 and row["token_fraction"] == l / 10
    empty = by.loc[("ast__Import", 0)]                              # |A| = 0: kept, both fractions 0
    assert empty[["A_size", "B_size", "A_only", "A_and_B", "B_only"]].tolist() == [0, 2, 0, 0, 2]
    assert (empty["concept_fraction"], empty["token_fraction"]) == (0.0, 0.0)
    row = by.loc[("ast__Pass", 7)]
    assert (row["concept_fraction"], row["token_fraction"]) == (0.6667, 0.3333)


def test_summary_means_and_stable_sort():
    universal, checker = _planted()
    s = token_independence_summary(token_independence_detail(universal, checker))
    assert list(s.columns) == SUMMARY_COLUMNS
    ties = [o for o in TESTED if o not in SPECIAL]                  # 53 objects all at 0.5
    assert s["object"].tolist() == ["ast__Pass", "ast__Break"] + ties + ["builtin__len", "ast__Import"]
    by = s.set_index("object")
    # Break: concept (10+9+...+3)/80, token (0+...+7)/80, A_only 52/8, A_and_B 28/8
    assert by.loc["ast__Break", SUMMARY_COLUMNS[3:]].tolist() == [0.65, 0.35, 10.0, 3.5, 6.5, 0.0]
    # Import: empty A at half the layers counts as 0 -> 0.25 / 0.25; A_size 16/8; B_only (4*2)/8
    assert by.loc["ast__Import", SUMMARY_COLUMNS[3:]].tolist() == [0.25, 0.25, 2.0, 1.0, 1.0, 1.0]
    assert by.loc["builtin__len", ["concept_fraction", "token_fraction"]].tolist() == [0.375, 0.625]
    assert by.loc["ast__Pass", "concept_fraction"] == 0.6667
    assert by.loc["builtin__len", "keyword"] == "len" and by.loc["builtin__len", "type"] == "builtin"


def test_group_means_and_high_token_layers():
    universal, checker = _planted()
    d = token_independence_detail(universal, checker)
    g = group_means(d)
    assert list(g.index) == ["all", "ast", "builtin", "modular"]
    # Sum of concept fractions: 53 default objects x 8 x 0.5 + Break 5.2 + Import 2 + Pass 8 x 0.6667 + len 3
    total = 53 * 8 * 0.5 + 5.2 + 2.0 + 8 * 0.6667 + 3.0
    assert g.loc["all", "concept_fraction"] == pytest.approx(total / 456, abs=1e-12)
    assert g.loc["all", "n_rows"] == 456 and g.loc["all", "n_objects"] == 57
    # MODULAR six: Break 5.2, Import 2, Pass 5.3336, ImportFrom/Continue/Assert 4 each
    assert g.loc["modular", "concept_fraction"] == pytest.approx((5.2 + 2 + 8 * 0.6667 + 12) / 48, abs=1e-12)
    assert g.loc["modular", "n_objects"] == 6
    assert g.loc["builtin", "n_objects"] == 33 and g.loc["ast", "n_objects"] == 24
    custom = group_means(d, {"nothing": []})
    assert custom.loc["nothing", "n_rows"] == 0 and np.isnan(custom.loc["nothing", "concept_fraction"])
    # Break's token fraction is 0.6 and 0.7 at layers 6, 7; len's is 1.0 at 2 and 5.
    assert high_token_layers(d) == {"ast__Break": [6, 7], "builtin__len": [2, 5]}


def test_no_keyword_lists_the_tokenless_concepts():
    universal, _ = _planted()
    nk = no_keyword_table(universal)
    assert list(nk.columns) == ["object", "status"]
    assert nk["object"].tolist() == list(TOKENLESS) and len(nk) == 48
    assert set(nk["status"]) == {"no_keyword"}


def test_layer_count_mismatch_is_an_error():
    universal, checker = _planted()
    short = MaskStack(checker.keys, checker.masks[:, :4])
    with pytest.raises(ValueError, match="layers"):
        token_independence_detail(universal, short)


def test_build_token_independence_tables(tmp_path):
    universal, checker = _planted()
    empty_pairs = MaskStack([], np.zeros((0, L, W), dtype=bool))
    layout.write_object_masks(tmp_path / layout.object_masks_name(0.001, 0.8),
                              ObjectMasks(0.001, 0.8, empty_pairs, universal, [], []))
    # A decoy at the paper's reference setting must not be used.
    decoy = MaskStack(universal.keys, np.zeros_like(universal.masks))
    layout.write_object_masks(tmp_path / layout.object_masks_name(0.5, 0.8),
                              ObjectMasks(0.5, 0.8, empty_pairs, decoy, [], []))
    layout.write_checker_masks(tmp_path / layout.TOKEN_CHECKER_MASKS,
                               CheckerMasks(0.001, 0.8, checker, {"n_prompts_per_object": 50},
                                            {k: 50 for k in checker.keys}))
    build_token_independence_tables(tmp_path)
    lines = (tmp_path / layout.TOKEN_INDEPENDENCE_DETAIL).read_text().splitlines()
    assert lines[0] == "A_size,B_size,A_only,A_and_B,B_only,token_fraction,concept_fraction,object,type,keyword,layer"
    assert lines[1] == "10,10,5,5,5,0.5,0.5,ast__Assert,ast,assert,0" and len(lines) == 457
    summary = pd.read_csv(tmp_path / layout.TOKEN_INDEPENDENCE_SUMMARY)
    assert list(summary.columns) == SUMMARY_COLUMNS and summary["object"].iloc[0] == "ast__Pass"
    nk = pd.read_csv(tmp_path / layout.TOKEN_INDEPENDENCE_NO_KEYWORD)
    assert nk["object"].tolist() == list(TOKENLESS)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_build_without_token_checker_file_names_it(tmp_path):
    universal, _ = _planted()
    empty_pairs = MaskStack([], np.zeros((0, L, W), dtype=bool))
    layout.write_object_masks(tmp_path / layout.object_masks_name(0.001, 0.8),
                              ObjectMasks(0.001, 0.8, empty_pairs, universal, [], []))
    with pytest.raises(layout.AtlasFileError, match="token_checker_masks.h5"):
        build_token_independence_tables(tmp_path)
    assert not (tmp_path / layout.TOKEN_INDEPENDENCE_DETAIL).exists()
