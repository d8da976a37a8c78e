"""Stage 14: concept-only / shared / token-only counts, the fractions and the two CSV tables.

Known answers: hand-built masks, and the planted fixture atlas, whose universal (A) and
checker (B) masks follow from the planted levels; counts and fractions are derived here with
Python sets and Python arithmetic, never by calling the code under test.
"""

from __future__ import annotations

import csv
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from builder_utils import concepts, decomposition, fixtures, layout
from builder_utils.concepts import KEYWORD_MAP, concept_key, split_pair_key
from builder_utils.decomposition import decompose, pooled_concept_fraction, summarise
from builder_utils.layout import AtlasFileError, MaskStack

SETTINGS = list(layout.SETTINGS)


# ----------------------------------------------------------------------------- the planted atlas


@pytest.fixture(scope="module")
def atlas():
    """The planted atlas shared with test_masks (read only): all 106 concepts, 80 pairs, width 32."""
    return fixtures.shared_fixture_atlas(n_pairs=80, width=32, seed=3)


def planted_counts(info: fixtures.FixtureInfo, setting) -> dict[tuple[str, int], tuple[int, int, int, int, int]]:
    """(target, layer) -> (|A|, |B|, |A∖B|, |A∩B|, |B∖A|) from the plant: A = ∩ planted pair masks, B = planted checker."""
    pairs = info.objects.planted_masks(*setting)
    checker = info.checkers.planted_masks(*setting)
    members: dict[str, list[int]] = {}
    for i, k in enumerate(info.objects.keys):
        a, b = split_pair_key(k)
        members.setdefault(concept_key("ast", a), []).append(i)
        members.setdefault(concept_key("builtin", b), []).append(i)
    out = {}
    for t in sorted(set(members) & set(info.checkers.keys) & set(KEYWORD_MAP)):
        for l in range(info.n_layers):
            A = set.intersection(*(set(np.flatnonzero(pairs[i, l]).tolist()) for i in members[t]))
            B = set(np.flatnonzero(checker[info.checkers.index()[t], l]).tolist())
            out[(t, l)] = (len(A), len(B), len(A - B), len(A & B), len(B - A))
    return out


def read_target_checker_text(path) -> tuple[list[str], dict[tuple[str, int], tuple[int, int, int]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    cells = {}
    for r in rows[1:]:
        for l, cell in enumerate(r[1:]):
            co, sh, to = (int(x) for x in cell.split(" / "))
            cells[(r[0], l)] = (co, sh, to)
    return rows[0], cells


def test_target_checker_tables_hold_the_planted_counts(atlas):
    for s in SETTINGS:
        header, cells = read_target_checker_text(atlas.root / layout.target_checker_name(*s))
        assert header == ["target"] + [f"L{l}" for l in range(8)]
        expected = planted_counts(atlas, s)
        assert len({t for t, _ in expected}) == 58
        assert cells == {k: v[2:] for k, v in expected.items()}, s


def test_concept_channels_are_concept_only(atlas):
    """Planted AST circuit channels never fire for checker prompts, so those in A count as concept-only."""
    s = (0.001, 0.2)
    uni = layout.read_object_masks(atlas.root / layout.object_masks_name(*s), pairs=False).universals.as_sets()
    rows = decompose(layout.read_object_masks(atlas.root / layout.object_masks_name(*s), pairs=False).universals,
                     layout.read_checker_masks(atlas.root / layout.checker_masks_name(*s)).masks)
    by = rows.set_index(["target", "layer"])
    for t in (k for k in sorted(KEYWORD_MAP) if k.startswith("ast__")):
        for l, ch in enumerate(atlas.ast_channels[t[5:]]):
            assert set(ch.tolist()) <= uni[t][l]
            assert by.loc[(t, l), "concept_only"] >= len(ch)


def rounded_mean(values, digits):
    """The exact mean of decimal `values`, rounded to `digits`. At an exact tie either neighbour is
    accepted: the release's float64 mean (pandas) decides those, and this oracle does not emulate it."""
    scale = 10 ** digits
    scaled = sum(Fraction(str(v)) for v in values) / len(values) * scale
    if scaled.denominator == 2:
        return pytest.approx(float(scaled) / scale, abs=0.5 / scale + 1e-12)
    return pytest.approx(round(scaled) / scale, abs=1e-12)


def test_summary_is_the_mean_of_the_per_row_rounded_fractions(atlas):
    with open(atlas.root / layout.SUMMARY, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0].keys()) == layout.SUMMARY_COLUMNS
    assert [(float(r["epsilon"]), float(r["consistency"])) for r in table] == SETTINGS      # ε-major
    for row, s in zip(table, SETTINGS):
        counts = planted_counts(atlas, s)
        frac = {k: (round(co / a, 4) if a else 0.0, round(sh / a, 4) if a else 0.0)
                for k, (a, b, co, sh, to) in counts.items()}

        def mean(keys, i):
            return rounded_mean([frac[k][i] for k in keys], 4)

        ast = [k for k in counts if k[0].startswith("ast__")]
        blt = [k for k in counts if k[0].startswith("builtin__")]
        assert (int(row["n_testable"]), int(row["n_ast"]), int(row["n_builtin"])) == (58, 24, 34)
        assert float(row["mean_concept_fraction"]) == mean(list(counts), 0)
        assert float(row["mean_token_fraction"]) == mean(list(counts), 1)
        assert float(row["ast_concept_fraction"]) == mean(ast, 0)
        assert float(row["ast_token_fraction"]) == mean(ast, 1)
        assert float(row["blt_concept_fraction"]) == mean(blt, 0)
        assert float(row["blt_token_fraction"]) == mean(blt, 1)
        assert float(row["mean_A_size"]) == rounded_mean([v[0] for v in counts.values()], 1)
        assert float(row["mean_B_size"]) == rounded_mean([v[1] for v in counts.values()], 1)


def test_summary_rows_equal_summarise_of_the_target_checker_rows(atlas):
    summary = pd.read_csv(atlas.root / layout.SUMMARY)
    for (_, row), s in zip(summary.iterrows(), SETTINGS):
        long = layout.read_target_checker(atlas.root / layout.target_checker_name(*s))
        a = long.concept_only + long.shared
        rows = long.assign(concept_type=[concepts.concept_type(t) for t in long.target], A_size=a,
                           B_size=long.shared + long.token_only,
                           concept_fraction=[round(co / n, 4) if n else 0.0 for co, n in zip(long.concept_only, a)],
                           token_fraction=[round(sh / n, 4) if n else 0.0 for sh, n in zip(long.shared, a)])
        assert summarise(rows, *s) == pytest.approx(row.to_dict(), abs=1e-12)


def test_summary_csv_text(atlas):
    lines = (atlas.root / layout.SUMMARY).read_text().splitlines()
    assert lines[0] == ",".join(layout.SUMMARY_COLUMNS)
    assert [ln.split(",")[:2] for ln in lines[1:]] == [[repr(e), repr(c)] for e, c in SETTINGS]
    assert all(ln.split(",")[2:5] == ["58", "24", "34"] for ln in lines[1:])


# ----------------------------------------------------------------------------- hand-built cases


def stack(keys, sets_per_layer, width=16):
    m = np.zeros((len(keys), len(sets_per_layer[0]), width), bool)
    for i, layers in enumerate(sets_per_layer):
        for l, chans in enumerate(layers):
            m[i, l, list(chans)] = True
    return MaskStack(list(keys), m)


def test_decompose_counts_and_fractions_by_hand():
    A = stack(["ast__For", "builtin__len", "builtin__abs"], [[{0, 1, 2, 3}, set()], [{4, 5}, {4}], [{1}, {1}]])
    B = stack(["ast__For", "builtin__len", "builtin__abs"], [[{2, 3, 9}, {7}], [{4, 5, 6}, set()], [{1}, {1}]])
    rows = decompose(A, B)
    assert list(rows.columns) == decomposition.ROW_COLUMNS
    # builtin__abs has no keyword: not testable
    assert rows[["target", "layer"]].values.tolist() == [["ast__For", 0], ["ast__For", 1],
                                                         ["builtin__len", 0], ["builtin__len", 1]]
    assert rows[["A_size", "B_size", "concept_only", "shared", "token_only"]].values.tolist() == [
        [4, 3, 2, 2, 1], [0, 1, 0, 0, 1], [2, 3, 0, 2, 1], [1, 0, 1, 0, 0]]
    assert rows.concept_fraction.tolist() == [0.5, 0.0, 0.0, 1.0]          # empty A: kept, 0.0
    assert rows.token_fraction.tolist() == [0.5, 0.0, 1.0, 0.0]
    assert rows.concept_type.tolist() == ["ast", "ast", "builtin", "builtin"]


def test_rounding_happens_per_row_before_the_mean():
    # co/A = 1/7 at two layers, A empty at the third: rows round to 0.1429, so the mean is
    # (0.1429 + 0.1429 + 0) / 3 = 0.095267 -> 0.0953 (rounding after the mean would give 0.0952)
    seven = set(range(7))
    A = stack(["ast__Pass"], [[seven, seven, set()]])
    B = stack(["ast__Pass"], [[set(range(1, 7)), set(range(1, 7)), set()]])
    rows = decompose(A, B)
    assert rows.concept_fraction.tolist() == [0.1429, 0.1429, 0.0]
    s = summarise(rows, 0.5, 0.8)
    assert s["mean_concept_fraction"] == 0.0953
    assert s["mean_token_fraction"] == round((0.8571 * 2) / 3, 4) == 0.5714
    assert s["mean_concept_fraction"] + s["mean_token_fraction"] < 1          # the empty row pulls both down
    assert s["blt_concept_fraction"] is None and s["blt_token_fraction"] is None
    assert s["mean_A_size"] == round(14 / 3, 1) == 4.7
    assert list(s) == layout.SUMMARY_COLUMNS


def test_pooled_and_mean_of_rows_are_different_aggregations():
    A = stack(["ast__Break", "ast__If", "builtin__len"], [[{0}, set(range(9))], [{0, 1}, {0, 1}], [{3}, {3}]])
    B = stack(["ast__Break", "ast__If", "builtin__len"], [[set(), set(range(9))], [{1}, set()], [{3}, {3}]])
    rows = decompose(A, B)
    # ast rows: Break (1/1, 0/9), If (1/2, 2/2) -> mean of rows 0.625; pooled (1+0+1+2)/(1+9+2+2) = 4/14
    assert summarise(rows, 0.1, 0.5)["ast_concept_fraction"] == 0.625
    assert pooled_concept_fraction(rows, "ast") == 4 / 14
    assert pooled_concept_fraction(rows, "modular") == 1 / 10
    assert pooled_concept_fraction(rows, "non_modular_ast") == 3 / 4
    assert pooled_concept_fraction(rows, "builtin") == 0.0
    assert pooled_concept_fraction(rows, "all") == 4 / 16
    assert pooled_concept_fraction(rows, ["ast__If"], layers=[1]) == 1.0
    assert math.isnan(pooled_concept_fraction(rows.assign(concept_only=0, shared=0), "ast"))
    with pytest.raises(ValueError, match="unknown group"):
        pooled_concept_fraction(rows, "nonsense")


def test_decompose_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="width"):
        decompose(stack(["ast__For"], [[{0}]], width=16), stack(["ast__For"], [[{0}]], width=8))


def _write_setting(root, setting, universal_keys, checker_keys, width=8, n_layers=2):
    pairs = MaskStack(["For__list"], np.ones((1, n_layers, width), bool))
    layout.write_object_masks(root / layout.object_masks_name(*setting), layout.ObjectMasks(
        *setting, pairs, MaskStack(universal_keys, np.ones((len(universal_keys), n_layers, width), bool)),
        ["For"], ["list"]))
    layout.write_checker_masks(root / layout.checker_masks_name(*setting), layout.CheckerMasks(
        *setting, MaskStack(checker_keys, np.zeros((len(checker_keys), n_layers, width), bool))))


def test_setting_without_testable_concepts_is_skipped(tmp_path):
    _write_setting(tmp_path, (0.1, 0.5), ["ast__For", "builtin__list"], ["builtin__abs"])      # no overlap
    _write_setting(tmp_path, (0.5, 0.8), ["ast__For", "builtin__list"], ["builtin__list"])
    summary = decomposition.build_decomposition_tables(tmp_path, [(0.1, 0.5), (0.5, 0.8)])
    assert not (tmp_path / layout.target_checker_name(0.1, 0.5)).exists()
    assert (tmp_path / layout.target_checker_name(0.5, 0.8)).read_text().splitlines() == [
        "target,L0,L1", "builtin__list,8 / 0 / 0,8 / 0 / 0"]
    lines = (tmp_path / layout.SUMMARY).read_text().splitlines()
    assert len(lines) == 2 and len(summary) == 1
    # no AST row: the ast columns are empty, as pandas writes None
    assert lines[1] == "0.5,0.8,1,0,1,1.0,0.0,,,1.0,0.0,8.0,0.0"


def test_missing_mask_file_names_the_file(tmp_path):
    _write_setting(tmp_path, (0.5, 0.8), ["ast__For"], ["ast__For"])
    (tmp_path / layout.checker_masks_name(0.5, 0.8)).unlink()
    with pytest.raises(AtlasFileError, match=r"13_checker_masks_eps0\.5_cons0\.8\.h5: file not found"):
        decomposition.build_decomposition_tables(tmp_path, [(0.5, 0.8)])
    assert not (tmp_path / layout.SUMMARY).exists()
