"""Stage 13: thresholds, marginalisation, Jaccard metrics and the mask files.

Known answers come from (a) hand-built activations with exact boundary values and (b) the
planted fixture atlas, whose masks follow from the planted levels alone (builder_utils.fixtures);
the expected universals are intersected here, with Python sets, from the planted pair masks.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from builder_utils import concepts, fixtures, layout, masks
from builder_utils.concepts import ATOMICITY_AST, ISOLATED, concept_key, pair_key, split_pair_key
from builder_utils.layout import Activations, AtlasFileError, MaskStack

SETTINGS = list(layout.SETTINGS)


# ----------------------------------------------------------------------------- helpers


def literal_masks(acts: Activations, epsilon: float, consistency: float) -> np.ndarray:
    """ALGORITHMS.md §6 verbatim: per unit and layer, float32 mean and rate against Python floats."""
    out = np.zeros(acts.activation_sum.shape, bool)
    for u, n in enumerate(acts.n_prompts.tolist()):
        for l in range(acts.n_layers):
            mean_act = acts.activation_sum[u, l] / n
            firing_rate = acts.firing_count[u, l].astype(np.float32) / n
            out[u, l] = (mean_act > epsilon) & (firing_rate >= consistency)
    return out


def as_sets(mask_row: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(layer).tolist()) for layer in mask_row]


def expected_universals(info: fixtures.FixtureInfo, setting) -> dict[str, list[set[int]]]:
    """AND over the pairs present for each concept, of the masks the plant defines (set intersections)."""
    planted = info.objects.planted_masks(*setting)
    pair_sets = {k: as_sets(planted[i]) for i, k in enumerate(info.objects.keys)}
    members: dict[str, list[str]] = {}
    for k in info.objects.keys:
        a, b = split_pair_key(k)
        members.setdefault(concept_key("ast", a), []).append(k)
        members.setdefault(concept_key("builtin", b), []).append(k)
    return {c: [set.intersection(*(pair_sets[p][l] for p in ps)) for l in range(info.n_layers)]
            for c, ps in members.items()}


# The planted atlas shared with test_decomposition (read only): all 106 concepts, 80 pairs, width 32.
SHARED = dict(n_pairs=80, width=32, seed=3)


@pytest.fixture(scope="module")
def atlas():
    return fixtures.shared_fixture_atlas(**SHARED)


@pytest.fixture(scope="module")
def object_files(atlas):
    return {s: layout.read_object_masks(atlas.root / layout.object_masks_name(*s)) for s in SETTINGS}


# ----------------------------------------------------------------------------- thresholds: exact values


def _acts(sums, counts, n=50):
    sums = np.asarray(sums, np.float32).reshape(len(sums), 1, -1)
    counts = np.asarray(counts, np.int32).reshape(len(counts), 1, -1)
    return Activations([f"k{i}" for i in range(len(sums))], sums, counts, np.full(len(sums), n, np.int64))


def test_epsilon_is_strict_and_consistency_is_not_at_exact_boundaries():
    n = 50
    # float32 means exactly equal to each ε (checked here, independently of the code under test)
    at_eps = {0.5: np.float32(25.0), 0.1: np.float32(5.0), 0.001: np.float32(0.05)}
    for e, s in at_eps.items():
        assert s / np.float32(n) == np.float32(e)
    above_half = np.nextafter(np.float32(25.0), np.float32(30))
    sums = [[at_eps[0.5], above_half, at_eps[0.1], at_eps[0.001], 40.0, 40.0, 40.0, 40.0]]
    counts = [[50, 50, 50, 50, 40, 39, 10, 9]]       # rates 0.8 (== C), just below 0.8, 0.2 (== C), below 0.2
    acts = _acts(sums, counts, n)
    got = {s: m.masks[0, 0].tolist() for s, m in masks.threshold_sweep(acts).items()}
    T, F = True, False
    assert got[(0.5, 0.8)] == [F, T, F, F, T, F, F, F]
    assert got[(0.5, 0.2)] == [F, T, F, F, T, T, T, F]
    assert got[(0.1, 0.8)] == [T, T, F, F, T, F, F, F]
    assert got[(0.001, 0.8)] == [T, T, T, F, T, F, F, F]
    assert got[(0.001, 0.5)] == [T, T, T, F, T, T, F, F]
    assert got[(0.001, 0.2)] == [T, T, T, F, T, T, T, F]
    assert masks.threshold_masks(acts, 0.5, 0.8).masks[0, 0].tolist() == got[(0.5, 0.8)]


def test_sweep_equals_the_literal_formula_on_adversarial_values():
    rng = np.random.default_rng(7)
    n = np.concatenate([np.full(20, 50), rng.integers(1, 120, 60), [1, 2, 3, 7, 49, 51, 99, 1000]])
    U, L, W = len(n), 2, 64
    sums = (rng.random((U, L, W)) * rng.choice([0.001, 0.1, 0.5, 3.0], (U, L, W)) * 1.2 * n[:, None, None])
    sums = sums.astype(np.float32)
    counts = np.floor(rng.random((U, L, W)) * (n[:, None, None] + 1)).astype(np.int32)
    # plant float32 sums whose mean lands exactly on, one ulp below and one ulp above each ε
    for j, e in enumerate(layout.EPSILONS):
        base = (np.float32(e) * n.astype(np.float32)).astype(np.float32)
        for d, val in enumerate((base, np.nextafter(base, np.float32(0)), np.nextafter(base, np.float32(9e9)))):
            sums[:, 0, 3 * j + d] = val
    counts[:, 1, :3] = np.ceil(np.array([0.2, 0.5, 0.8]) * n[:, None]).astype(np.int32)   # rate at/above C
    acts = Activations([f"u{i:03d}" for i in range(U)], sums, counts, n.astype(np.int64))
    sweep = masks.threshold_sweep(acts)
    assert sorted(sweep) == sorted(SETTINGS)
    for s in SETTINGS:
        np.testing.assert_array_equal(sweep[s].masks, literal_masks(acts, *s), err_msg=str(s))


def test_cutoffs_are_the_exact_boundaries():
    ns = np.arange(1, 301)
    for e in layout.EPSILONS + (0.0, 0.3, 2.5):
        t = masks.mean_cutoffs(ns, e)
        nf = ns.astype(np.float32)
        assert (t / nf <= np.float32(e)).all()
        assert (np.nextafter(t, np.float32(np.inf)) / nf > np.float32(e)).all()
    for c in layout.CONSISTENCIES + (0.0, 1.0, 0.33):
        k = masks.count_cutoffs(ns, c)
        for n, kk in zip(ns.tolist(), k.tolist()):
            assert np.float32(kk) / np.float32(n) >= np.float32(c)
            assert kk == 0 or np.float32(kk - 1) / np.float32(n) < np.float32(c)


def test_mean_cutoffs_at_extreme_epsilons():
    # ε = 0 and subnormal ε make the search walk many float32 steps; huge ε overflows ε·n
    ns = np.array([1, 2, 3, 50, 997, 65535, 10**6])
    f32max = float(np.finfo(np.float32).max)
    for e in (0.0, 1e-45, 1e-40, 1e-38, 1e30, 3e38, f32max):
        t = masks.mean_cutoffs(ns, e)
        nf = ns.astype(np.float32)
        with np.errstate(over="ignore"):
            assert (t / nf <= np.float32(e)).all(), e
            above = np.nextafter(t, np.float32(np.inf))
            assert ((above / nf > np.float32(e)) | (above == np.inf)).all(), e


@pytest.mark.parametrize("bad", [(-0.1, 0.5), (float("nan"), 0.5), (0.1, 1.5), (0.1, -0.2)])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        masks.threshold_masks(_acts([[1.0]], [[1]]), *bad)


# ----------------------------------------------------------------------------- marginalise, Jaccard: small cases


def test_marginalise_ands_the_pairs_present_per_concept():
    keys = ["For__list", "For__str", "If__list", "Pass___isolated_"]
    m = np.zeros((4, 2, 8), bool)
    m[0, :, [0, 1, 2]] = True      # For__list
    m[1, :, [1, 2, 3]] = True      # For__str
    m[2, :, [2, 3, 4]] = True      # If__list
    m[3, 0, [5]] = True            # Pass (single pair; layer 1 empty)
    got = masks.marginalise(MaskStack(keys, m))
    assert got.keys == ["ast__For", "ast__If", "ast__Pass", "builtin___isolated_", "builtin__list", "builtin__str"]
    sets = got.as_sets()
    assert sets["ast__For"] == {0: {1, 2}, 1: {1, 2}}
    assert sets["ast__If"] == {0: {2, 3, 4}, 1: {2, 3, 4}}
    assert sets["builtin__list"] == {0: {2}, 1: {2}}
    assert sets["builtin__str"] == {0: {1, 2, 3}, 1: {1, 2, 3}}
    assert sets["ast__Pass"] == sets["builtin___isolated_"] == {0: {5}, 1: set()}
    assert masks.marginalise(MaskStack([], np.zeros((0, 2, 8), bool))).keys == []


@pytest.mark.parametrize("width", [8, 63, 64, 65, 130])
def test_marginalise_any_width(width):
    rng = np.random.default_rng(width)
    keys = [f"A{i % 3}__b{i % 4}" for i in range(12)]
    m = rng.random((12, 3, width)) < 0.8
    got = masks.marginalise(MaskStack(keys, m)).as_arrays()
    for g in range(3):
        want = np.logical_and.reduce([m[i] for i in range(12) if i % 3 == g])
        for l in range(3):
            np.testing.assert_array_equal(got[f"ast__A{g}"][l], want[l])


def test_jaccard_matrix_known_values():
    m = np.zeros((4, 6), bool)
    m[0, [0, 1, 2]] = True
    m[1, [1, 2, 3, 4]] = True
    m[2, [0, 1, 2]] = True      # = row 0
    # row 3 empty
    j = masks.jaccard_matrix(m)
    assert j.dtype == np.float64 and j.shape == (4, 4)
    np.testing.assert_array_equal(np.diag(j), [1.0, 1.0, 1.0, 0.0])
    assert j[0, 1] == j[1, 0] == 2 / 5
    assert j[0, 2] == 1.0
    assert (j[3] == 0).all() and (j[:, 3] == 0).all()
    rng = np.random.default_rng(3)
    r = rng.random((20, 300)) < 0.2
    r[5] = False
    slow = [[len(set(np.flatnonzero(a)) & set(np.flatnonzero(b))) / len(set(np.flatnonzero(a)) | set(np.flatnonzero(b)))
             if (a | b).any() else 0.0 for b in r] for a in r]
    np.testing.assert_array_equal(masks.jaccard_matrix(r), np.array(slow))


# ----------------------------------------------------------------------------- the object sweep (pairs + universals)


def _random_pair_acts(rng, n_ast: int, n_builtin: int, width: int, n_prompts: int | str) -> Activations:
    """A ragged grid (each AST node pairs with a random subset of builtins), random sums and counts;
    `n_prompts` = "mixed" gives every pair its own prompt count."""
    keys = sorted(pair_key(f"A{a}", f"b{b}") for a in range(n_ast) for b in range(n_builtin)
                  if rng.random() < 0.7 or b == a % n_builtin)
    n = rng.integers(1, 80, len(keys)) if n_prompts == "mixed" else np.full(len(keys), n_prompts, np.int64)
    shape = (len(keys), layout.JACCARD_LAYER + 1, width)
    sums = (rng.random(shape) * rng.choice([0.001, 0.1, 0.5, 1.0], shape) * 1.5 * n[:, None, None]).astype(np.float32)
    counts = np.floor(rng.random(shape) * (n[:, None, None] + 1)).astype(np.int32)
    return Activations(keys, sums, counts, n)


@pytest.mark.parametrize("width, n_prompts, settings", [
    (64, 50, SETTINGS),
    (100, 50, SETTINGS[::-1]),                                     # padding bits; reversed setting order
    (64, "mixed", [(0.5, 0.2), (0.001, 0.8), (0.5, 0.5)]),         # per-unit cutoffs; an ε's settings apart
    (8, 7, [(0.1, 0.5)]),
])
def test_object_sweep_equals_the_literal_formula_and_marginalise(width, n_prompts, settings, monkeypatch):
    acts = _random_pair_acts(np.random.default_rng(width), n_ast=9, n_builtin=12, width=width, n_prompts=n_prompts)
    # blocks of ~2 units: most AST runs span several, and several threads share the builtins
    monkeypatch.setattr(masks, "_BLOCK_ELEMENTS", 2 * acts.n_layers * width)
    got = masks.sweep_object_masks(acts, settings)
    assert list(got) == [(float(e), float(c)) for e, c in settings]
    for s, om in got.items():
        np.testing.assert_array_equal(om.pairs.masks, literal_masks(acts, *s), err_msg=str(s))
        by_definition = masks.marginalise(MaskStack(acts.keys, literal_masks(acts, *s)))
        assert om.universals.keys == by_definition.keys
        np.testing.assert_array_equal(om.universals.masks, by_definition.masks, err_msg=str(s))
        for kind, matrix in (("ast", om.jaccard_ast), ("builtin", om.jaccard_builtin)):
            rows = [i for i, k in enumerate(by_definition.keys) if k.startswith(kind + "__")]
            np.testing.assert_array_equal(matrix, masks.jaccard_matrix(by_definition.masks[rows, layout.JACCARD_LAYER]))


def test_object_sweep_sorts_unsorted_units():
    rng = np.random.default_rng(5)
    acts = _random_pair_acts(rng, n_ast=4, n_builtin=5, width=64, n_prompts=20)
    order = rng.permutation(len(acts.keys))
    shuffled = Activations([acts.keys[i] for i in order], acts.activation_sum[order], acts.firing_count[order],
                           acts.n_prompts[order])
    for s, om in masks.sweep_object_masks(shuffled, [(0.1, 0.5)]).items():
        assert om.pairs.keys == acts.keys
        np.testing.assert_array_equal(om.pairs.masks, literal_masks(acts, *s))
        np.testing.assert_array_equal(om.universals.masks,
                                      masks.marginalise(MaskStack(acts.keys, literal_masks(acts, *s))).masks)


def test_the_stage_loader_narrows_counts_without_changing_them(tmp_path):
    acts = _small_object_acts(tmp_path)                              # n_prompts = 10
    layout.write_activations(tmp_path / layout.OBJECT_ACTIVATIONS, acts)
    loaded = masks.load_activations(tmp_path / layout.OBJECT_ACTIVATIONS, "pair")
    assert loaded.firing_count.dtype == np.uint8
    np.testing.assert_array_equal(loaded.firing_count, acts.firing_count)
    for s in SETTINGS:                                               # the masks do not depend on the type
        np.testing.assert_array_equal(masks.threshold_masks(loaded, *s).masks, literal_masks(acts, *s))
    acts.n_prompts[:] = 300                                          # counts could now exceed a byte
    layout.write_activations(tmp_path / layout.OBJECT_ACTIVATIONS, acts)
    assert masks.load_activations(tmp_path / layout.OBJECT_ACTIVATIONS, "pair").firing_count.dtype == np.uint16


# ----------------------------------------------------------------------------- the planted atlas


def test_pair_and_checker_masks_equal_the_plant(atlas, object_files):
    for s in SETTINGS:
        om = object_files[s]
        assert om.pairs.keys == atlas.objects.keys
        np.testing.assert_array_equal(om.pairs.masks, atlas.objects.planted_masks(*s), err_msg=str(s))
        cm = layout.read_checker_masks(atlas.root / layout.checker_masks_name(*s))
        assert cm.masks.keys == atlas.checkers.keys == sorted(concepts.KEYWORD_MAP)
        np.testing.assert_array_equal(cm.masks.masks, atlas.checkers.planted_masks(*s), err_msg=str(s))


def test_universal_masks_equal_the_intersection_of_planted_pair_masks(atlas, object_files):
    assert len(atlas.ast_nodes) == 43 and len(atlas.builtin_objs) == 63
    for s in SETTINGS:
        expected = expected_universals(atlas, s)
        got = object_files[s].universals
        assert got.keys == sorted(expected) == atlas.concept_keys
        for i, k in enumerate(got.keys):
            assert as_sets(got.masks[i]) == expected[k], (s, k)


def test_planted_concept_circuits_are_recovered_at_the_loosest_setting(atlas, object_files):
    """Every channel planted for a concept fires in all its pairs, so it is in the universal at (0.001, 0.2)."""
    uni = object_files[(0.001, 0.2)].universals.as_sets()
    for a, per_layer in atlas.ast_channels.items():
        for l, ch in enumerate(per_layer):
            assert set(ch.tolist()) <= uni[concept_key("ast", a)][l]
    for b, per_layer in atlas.builtin_channels.items():
        for l, ch in enumerate(per_layer):
            assert set(ch.tolist()) <= uni[concept_key("builtin", b)][l]
    for k, per_layer in atlas.keyword_channels.items():
        if k in uni:
            for l, ch in enumerate(per_layer):
                assert set(ch.tolist()) <= uni[k][l]


def test_universal_is_the_and_of_the_pair_masks_in_the_same_file(object_files):
    for s, om in object_files.items():
        pairs = om.pairs.as_arrays()
        uni = om.universals.as_arrays()
        for k in om.universals.keys:
            kind, name = concepts.split_concept_key(k)
            members = [p for p in om.pairs.keys if split_pair_key(p)[0 if kind == "ast" else 1] == name]
            for l in range(om.pairs.n_layers):
                np.testing.assert_array_equal(uni[k][l], np.logical_and.reduce([pairs[p][l] for p in members]))


def test_isolated_universals(atlas, object_files):
    isolated_pairs = [pair_key(a, ISOLATED) for a in ATOMICITY_AST]
    assert sorted(p for p in atlas.objects.keys if p.endswith(f"__{ISOLATED}")) == sorted(isolated_pairs)
    for s, om in object_files.items():
        pairs, uni = om.pairs.as_arrays(), om.universals.as_arrays()
        for a in ATOMICITY_AST:
            for l in range(om.pairs.n_layers):
                np.testing.assert_array_equal(uni[concept_key("ast", a)][l], pairs[pair_key(a, ISOLATED)][l])
        planted = atlas.objects.planted_masks(*s)
        idx = atlas.objects.index()
        want = np.logical_and.reduce([planted[idx[p]] for p in isolated_pairs])
        np.testing.assert_array_equal(om.universals.masks[om.universals.index()["builtin___isolated_"]], want)


def test_masks_are_monotone_in_epsilon_and_consistency(atlas, object_files):
    checker = {s: layout.read_checker_masks(atlas.root / layout.checker_masks_name(*s)).masks.masks
               for s in SETTINGS}
    n_strictly_smaller = 0
    for loose, strict in itertools.product(SETTINGS, SETTINGS):
        if strict[0] >= loose[0] and strict[1] >= loose[1] and strict != loose:
            for a, b in ((object_files[strict].pairs.masks, object_files[loose].pairs.masks),
                         (object_files[strict].universals.masks, object_files[loose].universals.masks),
                         (checker[strict], checker[loose])):
                assert not (a & ~b).any(), (loose, strict)
                n_strictly_smaller += int(b.sum() > a.sum())
    assert n_strictly_smaller > 0


def test_boundary_plants_are_decided_by_strictness(atlas):
    """The fixture puts sums exactly at mean == ε and counts at rate == C; check what the masks did with them."""
    acts = layout.read_activations(atlas.root / layout.OBJECT_ACTIVATIONS)
    n32 = acts.n_prompts.astype(np.float32)[:, None, None]
    mean, rate = acts.activation_sum / n32, acts.firing_count.astype(np.float32) / n32
    for (e, c), m in masks.threshold_sweep(acts).items():
        at_eps, at_cons = mean == np.float32(e), rate == np.float32(c)
        assert at_eps.sum() > 10 and at_cons.sum() > 10, (e, c)
        assert not m.masks[at_eps].any()                       # strict: never passes on mean == ε
        np.testing.assert_array_equal(m.masks[at_cons], (mean > np.float32(e))[at_cons])   # rate == C passes


# ----------------------------------------------------------------------------- files, read with raw h5py


def _datasets(group: h5py.Group) -> dict[str, h5py.Dataset]:
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_object_mask_file_layout(atlas, object_files):
    W, L = atlas.width, atlas.n_layers
    for s in SETTINGS:
        path = atlas.root / layout.object_masks_name(*s)
        with h5py.File(path, "r") as f:
            assert set(f.keys()) == {"pair_masks", "universal_masks", "metrics", "metadata"}
            for group, keys in (("pair_masks", atlas.pair_keys), ("universal_masks", atlas.concept_keys)):
                assert sorted(f[group].keys()) == [f"layer_{l}" for l in range(L)]
                for l in range(L):
                    assert list(f[group][f"layer_{l}"].keys()) == keys
                ds = f[group]["layer_0"][keys[0]]
                assert ds.dtype == np.bool_ and ds.shape == (W,) and ds.compression == "gzip"
            md = f["metadata"]
            assert dict(md.attrs) == {"epsilon": s[0], "consistency_thresh": s[1], "n_pairs": len(atlas.pairs),
                                      "n_layers": L}
            assert [x.decode() for x in md["ast_nodes"][()]] == list(concepts.AST_NODES)
            assert [x.decode() for x in md["builtin_objs"][()]] == list(concepts.BUILTIN_OBJECTS)
            assert h5py.check_string_dtype(md["ast_nodes"].dtype) is not None
            jac = {k: f["metrics"][k][()] for k in f["metrics"]}
        assert set(jac) == {"jaccard_ast_matrix", "jaccard_builtin_matrix"}
        assert jac["jaccard_ast_matrix"].shape == (43, 43) and jac["jaccard_ast_matrix"].dtype == np.float64
        assert jac["jaccard_builtin_matrix"].shape == (63, 63)
        # known answer: Jaccard of the planted universal sets at layer 4, rows in sorted name order
        expected = expected_universals(atlas, s)
        for kind, name in (("ast", "jaccard_ast_matrix"), ("builtin", "jaccard_builtin_matrix")):
            names = sorted(k for k in expected if k.startswith(f"{kind}__"))
            sets = [expected[k][layout.JACCARD_LAYER] for k in names]
            want = np.array([[len(a & b) / len(a | b) if a | b else 0.0 for b in sets] for a in sets])
            np.testing.assert_array_equal(jac[name], want)


def test_checker_mask_file_layout(atlas):
    for s in SETTINGS:
        with h5py.File(atlas.root / layout.checker_masks_name(*s), "r") as f:
            assert set(f.keys()) == {"token_checker_masks", "metadata"}
            assert dict(f["metadata"].attrs) == {"epsilon": s[0], "consistency_threshold": s[1]}
            assert sorted(f["token_checker_masks"].keys()) == [f"layer_{l}" for l in range(atlas.n_layers)]
            dsets = _datasets(f["token_checker_masks"])
            assert len(dsets) == 58 * atlas.n_layers
            assert all(d.dtype == np.bool_ and d.shape == (atlas.width,) and d.compression == "gzip"
                       for d in dsets.values())


def test_token_checker_mask_file(atlas):
    path = atlas.root / layout.TOKEN_CHECKER_MASKS
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"token_checker_masks", "metadata", "generation_stats"}
        md = dict(f["metadata"].attrs)
        assert md["epsilon"] == 0.001 and md["consistency_threshold"] == 0.8
        assert md["n_prompts_per_object"] == 50
        assert md["categories"] == "A_string,B_comment,C_identifier,D_dictkey,E_print"
        stats = dict(f["generation_stats"].attrs)
    real = dict(zip(atlas.token_checkers.keys, atlas.token_checkers.n_prompts.tolist()))
    assert stats == {f"{k}_n_valid": n for k, n in real.items()}
    assert sum(real.values()) == 2861 and min(real.values()) < 50          # the real counts, not the target 50
    cm = layout.read_checker_masks(path)
    np.testing.assert_array_equal(cm.masks.masks, atlas.token_checkers.planted_masks(0.001, 0.8))


# ----------------------------------------------------------------------------- resume and bad input


def test_resume_skips_current_files_and_rebuilds_stale_ones(atlas, tmp_path):
    src = tmp_path / layout.CHECKER_ACTIVATIONS
    shutil.copy(atlas.root / layout.CHECKER_ACTIVATIONS, src)
    out = tmp_path / layout.checker_masks_name(0.5, 0.8)
    masks.build_checker_masks(tmp_path, [(0.5, 0.8)])
    os.utime(out, (src.stat().st_mtime + 10, src.stat().st_mtime + 10))
    before = out.stat().st_mtime_ns
    masks.build_checker_masks(tmp_path, [(0.5, 0.8)])
    assert out.stat().st_mtime_ns == before                              # current: skipped
    os.utime(out, (src.stat().st_mtime - 10, src.stat().st_mtime - 10))  # older than its input: stale
    masks.build_checker_masks(tmp_path, [(0.5, 0.8)])
    assert out.stat().st_mtime_ns != before
    mid = out.stat().st_mtime_ns
    masks.build_checker_masks(tmp_path, [(0.5, 0.8)], resume=False)
    assert out.stat().st_mtime_ns != mid
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])    # no temp leftovers
    np.testing.assert_array_equal(layout.read_checker_masks(out).masks.masks,
                                  atlas.checkers.planted_masks(0.5, 0.8))


def test_parallel_writes_give_the_same_files_as_serial_writes(atlas, tmp_path, monkeypatch):
    # A large sweep also writes from a helper process; the bytes must not depend on who wrote them.
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for folder in (serial, parallel):
        folder.mkdir()
        shutil.copy(atlas.root / layout.OBJECT_ACTIVATIONS, folder / layout.OBJECT_ACTIVATIONS)
    masks.build_object_masks(serial)
    monkeypatch.setattr(masks, "_PARALLEL_WRITE_MIN_DATASETS", 0)
    masks.build_object_masks(parallel, writers=2)
    for s in layout.SETTINGS:
        name = layout.object_masks_name(*s)
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


def test_parallel_writes_write_every_job_once_and_raise_a_failure(tmp_path):
    jobs = [(Path.write_text, tmp_path / f"job{i}.txt", f"job {i}") for i in range(12)]
    assert masks._write_all(jobs, "test", n_datasets=10**9, writers=2) == [path for _, path, _ in jobs]
    assert sorted(p.read_text() for p in tmp_path.glob("job*.txt")) == sorted(f"job {i}" for i in range(12))
    broken = jobs[:3] + [(Path.write_text, tmp_path / "no such folder" / "x.txt", "x")] + jobs[3:6]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        masks._write_all(broken, "test", n_datasets=10**9, writers=2)


def _small_object_acts(tmp_path, **change):
    keys = ["For__list", "For__str", "Pass___isolated_"]
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 11, (3, 8, 16)).astype(np.int32)
    sums = (counts * 0.3).astype(np.float32)
    acts = Activations(keys, sums, counts, np.full(3, 10, np.int64), {"model_id": "m", "input_file": "p"},
                       ["For", "Pass"], ["_isolated_", "list", "str"])
    for k, v in change.items():
        setattr(acts, k, v)
    layout.write_activations(tmp_path / layout.OBJECT_ACTIVATIONS, acts)
    return acts


def _no_outputs(tmp_path):
    return not list(tmp_path.glob("13_*")) and not list(tmp_path.glob(".*tmp*"))


def test_missing_activation_file_names_the_file(tmp_path):
    for build in (masks.build_object_masks, masks.build_checker_masks, masks.build_token_checker_masks):
        with pytest.raises(AtlasFileError, match="activations.h5.*not found"):
            build(tmp_path)
    assert _no_outputs(tmp_path)


def test_missing_layer_group_names_the_file_and_layer(tmp_path):
    _small_object_acts(tmp_path)
    with h5py.File(tmp_path / layout.OBJECT_ACTIVATIONS, "a") as f:
        del f["firing_counts/layer_3"]
    with pytest.raises(AtlasFileError, match=r"12_object_activations\.h5.*layer_3"):
        masks.build_object_masks(tmp_path)
    assert _no_outputs(tmp_path)


def test_nan_activation_names_the_file(tmp_path):
    _small_object_acts(tmp_path)
    with h5py.File(tmp_path / layout.OBJECT_ACTIVATIONS, "a") as f:
        ds = f["activations/layer_2/For__str"]
        v = ds[()]
        v[4] = np.nan
        ds[...] = v
    with pytest.raises(AtlasFileError, match=r"12_object_activations\.h5.*non-finite.*For__str"):
        masks.build_object_masks(tmp_path)
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize("problem, match", [("count", "firing count 11 .*outside"), ("negative", "negative"),
                                            ("name", "bad unit name")])
def test_inconsistent_activations_are_rejected(tmp_path, problem, match):
    acts = _small_object_acts(tmp_path)
    if problem == "count":
        acts.firing_count[1, 5, 7] = 11          # more firing prompts than prompts
    elif problem == "negative":
        acts.activation_sum[0, 0, 0] = -1.0      # a sum of |act| cannot be negative
    else:
        acts.keys[2] = "Pass_isolated"           # not '<ast>__<builtin>'
    layout.write_activations(tmp_path / layout.OBJECT_ACTIVATIONS, acts)
    with pytest.raises(AtlasFileError, match=rf"12_object_activations\.h5: .*{match}"):
        masks.build_object_masks(tmp_path)
    assert _no_outputs(tmp_path)
