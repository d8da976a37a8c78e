"""Synthetic release-layout atlases with planted circuits — for tests and benchmarks.

`write_fixture_atlas(root)` writes, from a seed, what stages 11 and 12 would produce for the
release's real concept inventory (the 1,297-pair grid of `object_prompts.build_concept_matrix`
minus 21 "catastrophic" pairs = 1,276), then optionally runs stages 13, 14 and the analyses.

The activations are not random noise: every (unit, layer, channel) is PLANTED at two levels,

    mean_level = how many of ε ∈ (0.001, 0.1, 0.5) the mean |act| exceeds       (0..3)
    rate_level = how many of C ∈ (0.2, 0.5, 0.8) the firing rate reaches         (0..3)

so its mask at setting (EPSILONS[i], CONSISTENCIES[j]) is `mean_level > i and rate_level > j`,
known before any stage-13 code runs (`PlantedUnits.planted_masks`). Sums and counts are then
drawn inside those intervals, some exactly on a boundary (mean == ε, count == the smallest count
reaching C), and re-checked against the literal float32 rule of ALGORITHMS.md §6.

What is planted (channel regions never overlap inside one unit, so sets simply add up):

* AST node X: channels that fire in every pair (X, ·) — its circuit, mostly strong;
* builtin Y: channels that fire in every pair (·, Y) — smaller and weaker;
* keyword concept K (the 58 of KEYWORD_MAP): token channels that fire in K's object prompts
  AND in its checker / token-checker prompts (the "shared" part of §7);
* each pair: a few channels of its own (entangled, not universal);
* each checker object: a few channels of its own (the "token-only" part);
* a planted channel's levels may be higher in some pairs than its concept's base levels;
* everything else is noise that can never pass a setting: silent, or a mean ≤ 0.001 at any
  rate, or any mean at a rate < 0.2.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from builder_utils import layout
from builder_utils.concepts import ISOLATED, KEYWORD_MAP, concept_key, pair_key, split_concept_key, split_pair_key

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- release facts mimicked

# docs/module_2_comments.md: 21 catastrophic pairs, "AnnAssign (7), Delete (5), Call (4), Assign (3)" + 2 unnamed.
DROPPED_PER_AST = {"AnnAssign": 7, "Delete": 5, "Call": 4, "Assign": 3}
N_DROPPED_OTHER = 2
# Pairs the release is known to have kept (3A output), so they are never dropped here.
KNOWN_SURVIVORS = {("Delete", "float"), ("AnnAssign", "float"), ("AnnAssign", "bool")}
CHECKER_TARGET = 50
# Prompt totals of the release (dataset card): 58 × 50 minus a few short objects.
CHECKER_SHORTFALL = 58 * CHECKER_TARGET - 2848          # 11B
TOKEN_CHECKER_SHORTFALL = 58 * CHECKER_TARGET - 2861    # 5A
N_SHORT_OBJECTS = 3
MIN_PROMPTS = 10       # below this, some level intervals of C = 0.2/0.5/0.8 are empty
MIN_WIDTH = 32
MODEL_ID = "synthetic/planted-fixture"

# Channel regions, as fractions of the width; one region per kind of planted set.
REGIONS = {"ast": (0.0, 0.25), "ast_token": (0.25, 0.375), "builtin": (0.375, 0.5),
           "builtin_token": (0.5, 0.625), "own": (0.625, 1.0)}
# Mean |act| interval per mean level: level 0 = (0, 0.001], 1 = (0.001, 0.1], 2 = (0.1, 0.5], 3 = (0.5, 4].
MEAN_EDGES = (0.0,) + layout.EPSILONS + (4.0,)
BOUNDARY_SHARE = 0.15        # planted/noise channels put exactly on a threshold boundary
BUMP_SHARE = 0.25            # chance that a concept channel is one level stronger in a given pair


@dataclass
class PlantedUnits:
    """The plant of one activation file: units in file (sorted) order, levels per (unit, layer, channel)."""

    keys: list[str]
    n_prompts: np.ndarray        # (U,) int64
    mean_level: np.ndarray       # (U, L, W) uint8, 0..3
    rate_level: np.ndarray       # (U, L, W) uint8, 0..3
    boundary: np.ndarray         # (U, L, W) bool: sum and count put exactly on a threshold boundary

    def planted_masks(self, epsilon: float, consistency: float) -> np.ndarray:
        """(U, L, W) masks at a grid setting, by the definition of the levels."""
        i, j = layout.EPSILONS.index(epsilon), layout.CONSISTENCIES.index(consistency)
        return (self.mean_level > i) & (self.rate_level > j)

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


@dataclass
class FixtureInfo:
    """Everything `write_fixture_atlas` planted: enough to derive every stage-13/14 answer by hand."""

    root: Path
    seed: int
    width: int
    n_layers: int
    n_prompts: int                                   # prompts per object pair
    pairs: list[tuple[str, str]]                     # kept pairs, concept-matrix order
    dropped_pairs: list[tuple[str, str]]             # the synthetic "catastrophic" pairs
    ast_nodes: list[str]                             # present, sorted
    builtin_objs: list[str]
    objects: PlantedUnits                            # 12_object_activations.h5 (keys: pair keys)
    checkers: PlantedUnits                           # 12_checker_activations.h5 (11B; concept keys)
    token_checkers: PlantedUnits                     # 12_token_checker_activations.h5 (5A)
    # Planted channel sets, per layer (sorted int arrays):
    ast_channels: dict[str, list[np.ndarray]]        # AST node -> its circuit
    builtin_channels: dict[str, list[np.ndarray]]    # builtin -> its circuit
    keyword_channels: dict[str, list[np.ndarray]]    # keyword concept key -> token channels (objects and checkers)
    pair_channels: dict[str, list[np.ndarray]]       # pair key -> channels of that pair only
    checker_channels: dict[str, list[np.ndarray]]    # concept key -> 11B checker-only channels
    token_checker_channels: dict[str, list[np.ndarray]]   # concept key -> 5A checker-only channels
    files: list[Path] = field(default_factory=list)  # every file written, in order
    notes: list[str] = field(default_factory=list)   # e.g. analyses skipped

    @property
    def pair_keys(self) -> list[str]:
        return sorted(pair_key(a, b) for a, b in self.pairs)

    @property
    def concept_keys(self) -> list[str]:
        return sorted([concept_key("ast", a) for a in self.ast_nodes]
                      + [concept_key("builtin", b) for b in self.builtin_objs])


# ----------------------------------------------------------------------------- the pair grid


def fixture_pairs(n_pairs: int | None = None, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(kept, dropped): the real grid minus 21 seeded "catastrophic" pairs, optionally a covering subset.

    A subset always keeps the six isolated pairs, then picks pairs so that every builtin and
    every AST node appears (about 68 pairs cover all 106 concepts), then random ones.
    """
    from builder_utils.object_prompts import build_concept_matrix

    matrix = build_concept_matrix()
    rng = np.random.default_rng([seed, 1])
    by_ast: dict[str, list[tuple[str, str]]] = {}
    for p in matrix:
        by_ast.setdefault(p[0], []).append(p)
    dropped: list[tuple[str, str]] = []
    for ast_node, k in DROPPED_PER_AST.items():
        pool = [p for p in by_ast[ast_node] if p not in KNOWN_SURVIVORS]
        dropped += [pool[i] for i in rng.choice(len(pool), k, replace=False)]
    others = [p for p in matrix if p[1] != ISOLATED and p[0] not in DROPPED_PER_AST]
    dropped += [others[i] for i in rng.choice(len(others), N_DROPPED_OTHER, replace=False)]
    dropped_set = set(dropped)
    kept = [p for p in matrix if p not in dropped_set]
    dropped = [p for p in matrix if p in dropped_set]           # matrix order
    if n_pairs is None or n_pairs >= len(kept):
        return kept, dropped

    isolated = [p for p in kept if p[1] == ISOLATED]
    if n_pairs < len(isolated):
        raise ValueError(f"n_pairs must be >= {len(isolated)} (the isolated pairs are always kept), got {n_pairs}")
    chosen = list(isolated)
    seen_ast = {a for a, _ in chosen}
    rest = [kept[i] for i in rng.permutation(len(kept)) if kept[i][1] != ISOLATED]
    for blt in rng.permutation(sorted({b for _, b in rest})):        # one pair per builtin, new AST nodes first
        options = [p for p in rest if p[1] == blt]
        fresh = [p for p in options if p[0] not in seen_ast]
        chosen.append((fresh or options)[0])
        seen_ast.add(chosen[-1][0])
    for ast_node in sorted({a for a, _ in rest} - seen_ast):
        chosen.append(next(p for p in rest if p[0] == ast_node))
    chosen_set = set(chosen)
    chosen += [p for p in rest if p not in chosen_set]
    subset = set(chosen[:n_pairs])
    return [p for p in kept if p in subset], dropped


# ----------------------------------------------------------------------------- planting levels


def _region(width: int, name: str) -> np.ndarray:
    lo, hi = REGIONS[name]
    return np.arange(int(round(lo * width)), int(round(hi * width)))


def _levels(rng: np.random.Generator, size: int, strong: bool) -> tuple[np.ndarray, np.ndarray]:
    p = [0.15, 0.25, 0.6] if strong else [0.45, 0.35, 0.2]
    return (rng.choice([1, 2, 3], size, p=p).astype(np.uint8), rng.choice([1, 2, 3], size, p=p).astype(np.uint8))


@dataclass
class _Set:
    """Planted channels of one concept (or unit) at one layer, with their base levels."""
    channels: np.ndarray
    mean_level: np.ndarray
    rate_level: np.ndarray


def _draw_set(rng, width: int, region: str, sizes: list[int], probs: list[float], strong: bool) -> _Set:
    pool = _region(width, region)
    scale = max(1, width // 64)
    size = min(len(pool), int(rng.choice(sizes, p=probs)) * scale)
    channels = np.sort(rng.choice(pool, size, replace=False))
    return _Set(channels, *_levels(rng, size, strong))


def _noise_levels(rng, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels that fail every setting: silent, low mean (any rate) or low rate (any mean)."""
    kind = rng.choice(3, shape, p=[0.4, 0.3, 0.3])
    mean = np.where(kind == 2, rng.integers(1, 4, shape), 0).astype(np.uint8)
    rate = np.where(kind == 1, rng.integers(0, 4, shape), 0).astype(np.uint8)
    return mean, rate, kind == 0


def _plant(rng, shape, unit_sets: list[list[list[_Set]]], bump: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise everywhere, then every unit's planted sets (unit_sets[u][l] = list of _Set)."""
    mean, rate, silent = _noise_levels(rng, shape)
    for u, layers in enumerate(unit_sets):
        for l, sets in enumerate(layers):
            if not sets:
                continue
            ch = np.concatenate([s.channels for s in sets])
            m = np.concatenate([s.mean_level for s in sets])
            r = np.concatenate([s.rate_level for s in sets])
            if bump:   # the same concept channel can be stronger in some of its pairs
                m = np.minimum(3, m + (rng.random(len(m)) < BUMP_SHARE)).astype(np.uint8)
                r = np.minimum(3, r + (rng.random(len(r)) < BUMP_SHARE)).astype(np.uint8)
            mean[u, l, ch], rate[u, l, ch], silent[u, l, ch] = m, r, False
    return mean, rate, silent


# ----------------------------------------------------------------------------- levels -> sums and counts


def _literal_levels(sums: np.ndarray, counts: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The levels a (sum, count) pair has under the §6 rule, computed literally in float32."""
    n32 = n.astype(np.float32)[:, None, None]
    mean, rate = sums / n32, counts.astype(np.float32) / n32
    mean_level = sum((mean > np.float32(e)).astype(np.uint8) for e in layout.EPSILONS)
    rate_level = sum((rate >= np.float32(c)).astype(np.uint8) for c in layout.CONSISTENCIES)
    return mean_level, rate_level


def _min_count(n: int, consistency: float) -> int:
    """Smallest count whose float32 rate reaches C (literal enumeration)."""
    return next(k for k in range(n + 1) if np.float32(k) / np.float32(n) >= np.float32(consistency))


def _top_sum(n: int, epsilon: float) -> np.float32:
    """Largest float32 sum whose float32 mean is still <= ε (stepping one ulp at a time)."""
    n32, e32, inf = np.float32(n), np.float32(epsilon), np.float32(np.inf)
    s = np.float32(epsilon * n)
    while s / n32 > e32:
        s = np.nextafter(s, np.float32(0))
    while np.nextafter(s, inf) / n32 <= e32:
        s = np.nextafter(s, inf)
    return s


def _values(rng, mean_level, rate_level, silent, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (activation_sum, firing_count) inside the planted level intervals; some on a boundary."""
    shape = mean_level.shape
    uniq = np.unique(n)
    if uniq.min() < MIN_PROMPTS:
        raise ValueError(f"every unit needs >= {MIN_PROMPTS} prompts for all level intervals to exist")
    # Per unit: count bounds [0, k(0.2), k(0.5), k(0.8), n + 1] and sum boundaries top(ε) per ε.
    kb = {v: [0] + [_min_count(int(v), c) for c in layout.CONSISTENCIES] + [int(v) + 1] for v in uniq}
    tops = {v: [_top_sum(int(v), e) for e in layout.EPSILONS] for v in uniq}
    count_bounds = np.array([kb[v] for v in n], np.int64)                       # (U, 5)
    top = np.array([tops[v] for v in n], np.float32)                            # (U, 3)
    unit = np.arange(len(n))[:, None, None]
    boundary = (rng.random(shape) < BOUNDARY_SHARE) & ~silent

    # counts: level j means [bounds[j], bounds[j+1]); a non-silent channel fires at least once.
    lo = np.maximum(count_bounds[unit, rate_level], np.where(silent, 0, 1))
    hi = count_bounds[unit, rate_level + 1] - 1
    counts = lo + np.floor(rng.random(shape) * (hi - lo + 1)).astype(np.int64)
    # on a boundary: the smallest count reaching C (rate == C when n allows), or at level 0 the largest below 0.2
    counts = np.where(boundary, np.where(rate_level > 0, lo, hi), counts)
    counts = np.where(silent, 0, counts).astype(np.int32)

    # sums: a mean well inside its interval, or on a boundary (mean == ε, or just above 0.5 at level 3).
    edges = np.array(MEAN_EDGES)
    a, b = edges[mean_level], edges[mean_level + 1]
    mean = a + (b - a) * (0.05 + 0.9 * rng.random(shape))
    sums = (mean * n[:, None, None]).astype(np.float32)
    top_here = top[unit, np.minimum(mean_level, 2)]
    on_edge = np.where(mean_level < 3, top_here, np.nextafter(top_here, np.float32(np.inf)))
    sums = np.where(boundary, on_edge, sums)
    sums = np.where(silent, np.float32(0), sums).astype(np.float32)

    got_mean, got_rate = _literal_levels(sums, counts, n)
    if not ((got_mean == mean_level) & (got_rate == rate_level)).all():
        raise AssertionError("fixture bug: drawn activations do not have their planted levels")
    return sums, counts, boundary


# ----------------------------------------------------------------------------- prompts


def _short_counts(rng, keys: list[str], shortfall: int) -> dict[str, int]:
    """Prompt count per checker object: the target, except a few seeded objects sharing the shortfall."""
    counts = {k: CHECKER_TARGET for k in keys}
    short = rng.choice(len(keys), N_SHORT_OBJECTS, replace=False)
    parts = 1 + rng.multinomial(shortfall - N_SHORT_OBJECTS, [1 / N_SHORT_OBJECTS] * N_SHORT_OBJECTS)
    for i, s in zip(short, parts):
        counts[keys[i]] = CHECKER_TARGET - int(s)
    if min(counts.values()) < MIN_PROMPTS:
        raise ValueError(f"a shortfall of {shortfall} over {N_SHORT_OBJECTS} objects leaves one below {MIN_PROMPTS}")
    return counts


def _object_prompts(rng, pairs, n_prompts: int) -> pd.DataFrame:
    rows = [(a, b, v, f"# {a} with {b}, variation {v}\nvalue_{v} = {b if b != ISOLATED else 'None'}")
            for a, b in pairs for v in range(n_prompts)]
    df = pd.DataFrame(rows, columns=["ast_node", "builtin_obj", "variation_id", "prompt_text"])
    df["variation_id"] = df["variation_id"].astype(np.int64)
    df["sequence_loss"] = rng.uniform(0.5, 2.9, len(df)).astype(np.float64)
    df["token_length"] = (df["prompt_text"].str.len() // 3).astype(np.int64)
    df["ast_verified"] = np.ones(len(df), bool)
    return df[layout.OBJECT_PROMPT_COLUMNS]


def _checker_prompts(counts: dict[str, int], template: str) -> pd.DataFrame:
    rows = [(k, KEYWORD_MAP[k]["keyword"], v, template.format(kw=KEYWORD_MAP[k]["keyword"], v=v))
            for k in sorted(counts) for v in range(counts[k])]
    df = pd.DataFrame(rows, columns=layout.CHECKER_PROMPT_COLUMNS)
    df["variation_id"] = df["variation_id"].astype(np.int64)
    return df


# ----------------------------------------------------------------------------- the atlas


def write_fixture_atlas(root: os.PathLike | str, *, n_pairs: int | None = None, width: int = 64,
                        n_layers: int = layout.N_LAYERS, n_prompts: int = 50, seed: int = 0,
                        activations: bool = True, derived: bool = True) -> FixtureInfo:
    """Write a seeded synthetic atlas under `root` (release names and layouts); return its plant.

    `n_pairs=None` gives the release's 1,276 pairs; a number gives a covering subset (≥ 6).
    `activations=False` writes only the prompt parquets; `derived=True` (needs activations)
    also runs stage 13, stage 14 and the analyses whose modules exist. No manifest is written.
    """
    if width < MIN_WIDTH:
        raise ValueError(f"width must be >= {MIN_WIDTH}, got {width}")
    if n_prompts < MIN_PROMPTS:
        raise ValueError(f"n_prompts must be >= {MIN_PROMPTS}, got {n_prompts}")
    if derived and not activations:
        raise ValueError("derived=True needs activations=True")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng_sets, rng_levels, rng_values, rng_prompts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    pairs, dropped = fixture_pairs(n_pairs, seed)
    ast_nodes, builtin_objs = sorted({a for a, _ in pairs}), sorted({b for _, b in pairs})
    keyword_concepts = sorted(KEYWORD_MAP)

    # --- planted sets, per concept and layer (base levels)
    def per_layer(region, sizes, probs, strong):
        return [_draw_set(rng_sets, width, region, sizes, probs, strong) for _ in range(n_layers)]

    ast_sets = {a: per_layer("ast", [0, 1, 2, 3, 4], [0.1, 0.2, 0.3, 0.2, 0.2], True) for a in ast_nodes}
    blt_sets = {b: per_layer("builtin", [0, 1, 2], [0.3, 0.4, 0.3], False) for b in builtin_objs}
    token_sets = {k: per_layer(f"{split_concept_key(k)[0]}_token", [1, 2, 3], [1 / 3] * 3, True)
                  for k in keyword_concepts}
    pair_sets = {pair_key(a, b): per_layer("own", [0, 1, 2, 3], [0.25] * 4, False) for a, b in pairs}
    checker_sets = {k: per_layer("own", [0, 1, 2, 3], [0.25] * 4, False) for k in keyword_concepts}
    token_checker_sets = {k: per_layer("own", [0, 1, 2, 3], [0.25] * 4, False) for k in keyword_concepts}

    def checker_view(k, own):
        """The keyword's token channels at fresh (checker-prompt) levels, plus the object's own channels."""
        return [[_Set(t.channels, *_levels(rng_levels, len(t.channels), True)), own[k][l]]
                for l, t in enumerate(token_sets[k])]

    # --- units and their levels
    object_keys = sorted(pair_key(a, b) for a, b in pairs)
    object_sets = []
    for key in object_keys:
        a, b = split_pair_key(key)
        ka, kb = concept_key("ast", a), concept_key("builtin", b)
        object_sets.append([[ast_sets[a][l], blt_sets[b][l], pair_sets[key][l]]
                            + ([token_sets[ka][l]] if ka in token_sets else [])
                            + ([token_sets[kb][l]] if kb in token_sets else []) for l in range(n_layers)])
    checker_counts = _short_counts(rng_prompts, keyword_concepts, CHECKER_SHORTFALL)
    token_counts = _short_counts(rng_prompts, keyword_concepts, TOKEN_CHECKER_SHORTFALL)

    def units(keys, unit_sets, counts, bump):
        n = np.array([counts[k] for k in keys], np.int64)
        mean, rate, silent = _plant(rng_levels, (len(keys), n_layers, width), unit_sets, bump)
        return PlantedUnits(keys, n, mean, rate, np.zeros(mean.shape, bool)), silent

    objects, obj_silent = units(object_keys, object_sets, {k: n_prompts for k in object_keys}, True)
    checkers, chk_silent = units(keyword_concepts, [checker_view(k, checker_sets) for k in keyword_concepts],
                                 checker_counts, False)
    token_checkers, tok_silent = units(keyword_concepts, [checker_view(k, token_checker_sets)
                                                          for k in keyword_concepts], token_counts, False)

    info = FixtureInfo(
        root=root, seed=seed, width=width, n_layers=n_layers, n_prompts=n_prompts, pairs=pairs,
        dropped_pairs=dropped, ast_nodes=ast_nodes, builtin_objs=builtin_objs,
        objects=objects, checkers=checkers, token_checkers=token_checkers,
        ast_channels={a: [s.channels for s in v] for a, v in ast_sets.items()},
        builtin_channels={b: [s.channels for s in v] for b, v in blt_sets.items()},
        keyword_channels={k: [s.channels for s in v] for k, v in token_sets.items()},
        pair_channels={k: [s.channels for s in v] for k, v in pair_sets.items()},
        checker_channels={k: [s.channels for s in v] for k, v in checker_sets.items()},
        token_checker_channels={k: [s.channels for s in v] for k, v in token_checker_sets.items()})

    # --- stage 11: prompt tables (+ the 11A stats)
    obj_prompts = _object_prompts(rng_prompts, pairs, n_prompts)
    _write(info, root / layout.OBJECT_PROMPTS, lambda p: layout.write_table(obj_prompts, p))
    _write(info, root / layout.OBJECT_PROMPT_STATS,
           lambda p: _write_stats(p, pairs, dropped, ast_nodes, builtin_objs, n_prompts))
    chk = _checker_prompts(checker_counts, 'note = "the {kw} of item{v}"')
    _write(info, root / layout.CHECKER_PROMPTS, lambda p: layout.write_table(chk, p))
    tok = _checker_prompts(token_counts, '# {kw} reference {v}\nvalue = {v}')
    # 5A wrote this one with pandas' default index handling (RangeIndex kept as metadata only).
    _write(info, root / layout.TOKEN_CHECKER_PROMPTS, lambda p: _to_parquet_default_index(tok, p))

    if not activations:
        return info

    # --- stage 12: activations with the planted levels
    for planted, silent, name, prompts_file in (
            (objects, obj_silent, layout.OBJECT_ACTIVATIONS, layout.OBJECT_PROMPTS),
            (checkers, chk_silent, layout.CHECKER_ACTIVATIONS, layout.CHECKER_PROMPTS),
            (token_checkers, tok_silent, layout.TOKEN_CHECKER_ACTIVATIONS, layout.TOKEN_CHECKER_PROMPTS)):
        sums, counts, planted.boundary = _values(rng_values, planted.mean_level, planted.rate_level, silent,
                                                 planted.n_prompts)
        acts = layout.Activations(planted.keys, sums, counts, planted.n_prompts,
                                  {"model_id": MODEL_ID, "input_file": prompts_file})
        if name == layout.OBJECT_ACTIVATIONS:
            acts.ast_nodes, acts.builtin_objs = ast_nodes, builtin_objs
        _write(info, root / name, lambda p, acts=acts: layout.write_activations(p, acts))

    if derived:
        run_derived_stages(info)
    return info


@functools.lru_cache(maxsize=4)
def shared_fixture_atlas(*, n_pairs: int | None = None, width: int = 64, n_layers: int = layout.N_LAYERS,
                         n_prompts: int = 50, seed: int = 0) -> FixtureInfo:
    """A derived fixture atlas written once per process (a temporary folder, removed at exit).

    For test modules that only READ it, so several can share one build; never modify its files.
    """
    root = Path(tempfile.mkdtemp(prefix="csp-atlas-fixture-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write_fixture_atlas(root / "raw", n_pairs=n_pairs, width=width, n_layers=n_layers,
                               n_prompts=n_prompts, seed=seed)


def _write(info: FixtureInfo, path: Path, writer) -> None:
    writer(path)
    info.files.append(path)


def _write_stats(path: Path, pairs, dropped, ast_nodes, builtin_objs, n_prompts: int) -> None:
    stats = {"run_name": "11A_object", "mode": "small", "n_ast": len(ast_nodes), "n_builtins": len(builtin_objs),
             "total_pairs": len(pairs) + len(dropped), "n_generate": n_prompts, "n_keep": n_prompts,
             "successful_pairs": len(pairs), "failed_pairs": len(dropped), "empty_gen_pairs": [],
             "catastrophic_pairs": [list(p) for p in dropped], "total_prompts": len(pairs) * n_prompts}
    with layout.atomic_output(path) as tmp:
        tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")


def _to_parquet_default_index(df: pd.DataFrame, path: Path) -> None:
    with layout.atomic_output(path) as tmp:
        df.to_parquet(tmp)


def run_derived_stages(info: FixtureInfo) -> None:
    """Stages 13 and 14 on the fixture's activations, then the analyses whose modules exist."""
    from builder_utils import decomposition, masks

    root = info.root
    info.files += masks.build_object_masks(root, resume=False)
    info.files += masks.build_checker_masks(root, resume=False)
    info.files.append(masks.build_token_checker_masks(root, resume=False))
    decomposition.build_decomposition_tables(root)
    info.files += [root / layout.target_checker_name(e, c) for e, c in layout.SETTINGS
                   if (root / layout.target_checker_name(e, c)).is_file()] + [root / layout.SUMMARY]
    for module, builder, outputs in (
            ("modularity", "build_modularity_tables", [layout.MODULARITY_SCORES, layout.MODULARITY_DETAIL]),
            ("token_independence", "build_token_independence_tables",
             [layout.TOKEN_INDEPENDENCE_SUMMARY, layout.TOKEN_INDEPENDENCE_DETAIL,
              layout.TOKEN_INDEPENDENCE_NO_KEYWORD])):
        try:
            mod = __import__(f"builder_utils.{module}", fromlist=[builder])
        except ImportError as exc:
            note = f"skipped builder_utils.{module}: {exc}"
            log.info(note)
            info.notes.append(note)
            continue
        getattr(mod, builder)(root)
        info.files += [root / o for o in outputs]
