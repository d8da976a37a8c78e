"""The synthetic planted atlas: inventory, prompt tables, and activations that really carry the plant."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from builder_utils import concepts, fixtures, layout
from builder_utils.concepts import ISOLATED, KEYWORD_MAP, concept_key, pair_key, split_pair_key
from builder_utils.object_prompts import build_concept_matrix


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return fixtures.write_fixture_atlas(tmp_path_factory.mktemp("fx") / "raw", n_pairs=75, width=32, seed=5,
                                        derived=False)


# ----------------------------------------------------------------------------- the pair grid


def test_full_grid_drops_21_pairs_like_the_release():
    kept, dropped = fixtures.fixture_pairs(seed=0)
    matrix = build_concept_matrix()
    assert len(matrix) == 1297 and len(kept) == 1276 and len(dropped) == 21
    assert set(kept) | set(dropped) == set(matrix) and not set(kept) & set(dropped)
    assert kept == [p for p in matrix if p in set(kept)]                 # matrix order preserved
    per_ast = collections.Counter(a for a, _ in dropped)
    assert {a: per_ast[a] for a in ("AnnAssign", "Delete", "Call", "Assign")} == {
        "AnnAssign": 7, "Delete": 5, "Call": 4, "Assign": 3}
    others = [p for p in dropped if p[0] not in ("AnnAssign", "Delete", "Call", "Assign")]
    assert len(others) == 2 and all(b != ISOLATED for _, b in others)
    assert {("Delete", "float"), ("AnnAssign", "float"), ("AnnAssign", "bool")} <= set(kept)
    assert {a for a, _ in kept} == set(concepts.AST_NODES)
    assert {b for _, b in kept} == set(concepts.BUILTIN_OBJECTS)
    assert fixtures.fixture_pairs(seed=0) == (kept, dropped)
    assert fixtures.fixture_pairs(seed=1)[1] != dropped


@pytest.mark.parametrize("n", [6, 40, 75, 200])
def test_subsets_keep_the_isolated_pairs_and_cover_the_inventory(n):
    kept, _ = fixtures.fixture_pairs(n, seed=2)
    assert len(kept) == n
    assert {(a, ISOLATED) for a in concepts.ATOMICITY_AST} <= set(kept)
    full, _ = fixtures.fixture_pairs(seed=2)
    assert kept == [p for p in full if p in set(kept)]
    if n >= 75:
        assert {a for a, _ in kept} == set(concepts.AST_NODES)
        assert {b for _, b in kept} == set(concepts.BUILTIN_OBJECTS)
    with pytest.raises(ValueError, match="n_pairs"):
        fixtures.fixture_pairs(5)


# ----------------------------------------------------------------------------- prompt tables


def test_prompt_tables_have_the_release_columns_and_counts(small):
    obj = pq.read_table(small.root / layout.OBJECT_PROMPTS)
    assert obj.schema.names == layout.OBJECT_PROMPT_COLUMNS
    types = {f.name: str(f.type) for f in obj.schema}
    assert types["variation_id"] == types["token_length"] == "int64"
    assert types["sequence_loss"] == "double" and types["ast_verified"] == "bool"
    assert "string" in types["ast_node"] and "string" in types["prompt_text"]
    df = obj.to_pandas()
    assert len(df) == len(small.pairs) * small.n_prompts
    assert list(dict.fromkeys(zip(df.ast_node, df.builtin_obj))) == small.pairs          # matrix order
    assert df.variation_id.tolist() == list(range(small.n_prompts)) * len(small.pairs)
    assert (df.sequence_loss < 3.0).all() and df.ast_verified.all()

    for name, total, unit in ((layout.CHECKER_PROMPTS, 2848, small.checkers),
                              (layout.TOKEN_CHECKER_PROMPTS, 2861, small.token_checkers)):
        t = pq.read_table(small.root / name)
        assert t.schema.names == layout.CHECKER_PROMPT_COLUMNS
        chk = t.to_pandas()
        counts = chk.groupby("object").size()
        assert len(chk) == total and sorted(counts.index) == sorted(KEYWORD_MAP)
        assert list(chk.object) == sorted(chk.object)
        assert (counts < 50).sum() == fixtures.N_SHORT_OBJECTS and counts.max() == 50
        assert dict(counts) == dict(zip(unit.keys, unit.n_prompts.tolist()))      # activations use real counts
        assert (chk.keyword == [KEYWORD_MAP[o]["keyword"] for o in chk.object]).all()
    # 5A wrote its parquet with pandas' default index handling: a RangeIndex kept as metadata only
    meta = pq.read_schema(small.root / layout.TOKEN_CHECKER_PROMPTS).pandas_metadata
    assert meta["index_columns"][0]["kind"] == "range"

    stats = json.loads((small.root / layout.OBJECT_PROMPT_STATS).read_text())
    assert stats["successful_pairs"] == len(small.pairs) and stats["failed_pairs"] == 21
    assert stats["total_prompts"] == len(df)
    assert [tuple(p) for p in stats["catastrophic_pairs"]] == small.dropped_pairs


# ----------------------------------------------------------------------------- the plant


def _literal_levels(acts):
    n32 = acts.n_prompts.astype(np.float32)[:, None, None]
    mean, rate = acts.activation_sum / n32, acts.firing_count.astype(np.float32) / n32
    return (sum((mean > e).astype(int) for e in layout.EPSILONS),
            sum((rate >= c).astype(int) for c in layout.CONSISTENCIES))


@pytest.mark.parametrize("name, attr", [(layout.OBJECT_ACTIVATIONS, "objects"),
                                        (layout.CHECKER_ACTIVATIONS, "checkers"),
                                        (layout.TOKEN_CHECKER_ACTIVATIONS, "token_checkers")])
def test_activations_carry_the_planted_levels(small, name, attr):
    acts = layout.read_activations(small.root / name)
    planted = getattr(small, attr)
    assert acts.keys == planted.keys and acts.activation_sum.shape == (len(planted.keys), 8, 32)
    np.testing.assert_array_equal(acts.n_prompts, planted.n_prompts)
    mean_level, rate_level = _literal_levels(acts)
    np.testing.assert_array_equal(mean_level, planted.mean_level)
    np.testing.assert_array_equal(rate_level, planted.rate_level)
    np.testing.assert_array_equal(acts.firing_count == 0, acts.activation_sum == 0)   # fires iff |act| > 0
    assert (acts.firing_count <= acts.n_prompts[:, None, None]).all()
    assert acts.attrs["model_id"] == fixtures.MODEL_ID
    # some channels sit exactly on each boundary of the n = 50 units
    full = acts.n_prompts == 50
    n32 = np.float32(50)
    for e in layout.EPSILONS:
        assert (acts.activation_sum[full] / n32 == np.float32(e)).sum() > 0
    for c in layout.CONSISTENCIES:
        assert (acts.firing_count[full].astype(np.float32) / n32 == np.float32(c)).sum() > 0


def _planted_channels(info, key):
    """All channels planted for one object pair, per layer."""
    a, b = split_pair_key(key)
    out = []
    for l in range(info.n_layers):
        sets = [info.ast_channels[a][l], info.builtin_channels[b][l], info.pair_channels[key][l]]
        sets += [info.keyword_channels[k][l] for k in (concept_key("ast", a), concept_key("builtin", b))
                 if k in info.keyword_channels]
        assert sum(len(s) for s in sets) == len(set(np.concatenate(sets).tolist()))   # disjoint regions
        out.append(set(np.concatenate(sets).tolist()))
    return out


def test_only_planted_channels_can_pass_any_setting(small):
    loosest = small.objects.planted_masks(0.001, 0.2)
    for i, key in enumerate(small.objects.keys):
        for l, chans in enumerate(_planted_channels(small, key)):
            assert set(np.flatnonzero(loosest[i, l]).tolist()) == chans
    chk = small.checkers.planted_masks(0.001, 0.2)
    for i, key in enumerate(small.checkers.keys):
        for l in range(small.n_layers):
            want = set(small.keyword_channels[key][l].tolist()) | set(small.checker_channels[key][l].tolist())
            assert set(np.flatnonzero(chk[i, l]).tolist()) == want


def test_activation_file_metadata(small):
    acts = layout.read_activations(small.root / layout.OBJECT_ACTIVATIONS)
    assert acts.ast_nodes == small.ast_nodes == list(concepts.AST_NODES)
    assert acts.builtin_objs == small.builtin_objs == list(concepts.BUILTIN_OBJECTS)
    assert acts.keys == small.pair_keys == sorted(pair_key(a, b) for a, b in small.pairs)
    assert acts.attrs["input_file"] == layout.OBJECT_PROMPTS


def test_same_seed_same_atlas(tmp_path):
    a = fixtures.write_fixture_atlas(tmp_path / "a", n_pairs=6, width=32, n_layers=2, seed=9, derived=False)
    b = fixtures.write_fixture_atlas(tmp_path / "b", n_pairs=6, width=32, n_layers=2, seed=9, derived=False)
    for name in (layout.OBJECT_ACTIVATIONS, layout.CHECKER_ACTIVATIONS, layout.TOKEN_CHECKER_ACTIVATIONS):
        x, y = layout.read_activations(tmp_path / "a" / name), layout.read_activations(tmp_path / "b" / name)
        np.testing.assert_array_equal(x.activation_sum, y.activation_sum)
        np.testing.assert_array_equal(x.firing_count, y.firing_count)
    np.testing.assert_array_equal(a.objects.mean_level, b.objects.mean_level)
    c = fixtures.write_fixture_atlas(tmp_path / "c", n_pairs=6, width=32, n_layers=2, seed=10, activations=False,
                                     derived=False)
    assert not (tmp_path / "c" / layout.OBJECT_ACTIVATIONS).exists()
    assert not np.array_equal(a.objects.mean_level, c.objects.mean_level)


def test_derived_run_writes_every_release_file(tmp_path):
    info = fixtures.write_fixture_atlas(tmp_path, n_pairs=6, width=32, n_layers=5, seed=1)   # 5: Jaccard uses L4
    names = set(layout.release_file_names()) | {layout.TOKEN_CHECKER_ACTIVATIONS, layout.OBJECT_PROMPT_STATS}
    assert {p.name for p in tmp_path.iterdir()} == names
    assert {p.name for p in info.files} == names and info.notes == []
    assert not (tmp_path / layout.MANIFEST).exists()
    # only the six isolated AST nodes (all keyword concepts) are testable in this grid
    summary = layout.read_table(tmp_path / layout.SUMMARY)
    assert summary.n_testable.tolist() == [6] * 9 and summary.n_builtin.tolist() == [0] * 9


@pytest.mark.parametrize("kwargs, match", [({"width": 16}, "width"), ({"n_prompts": 5}, "n_prompts"),
                                           ({"activations": False, "derived": True}, "derived")])
def test_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fixtures.write_fixture_atlas(tmp_path, n_pairs=6, **kwargs)
