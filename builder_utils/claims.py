"""The paper's numerical claims: a registry, where the atlas is, and the table the notebooks fill.

Every claim of PAPER_CLAIMS.md §1–§9 (N01 … K06) is declared once below, as data: its id,
the paper section, a one-line statement, the paper's value, the tolerance that value gets,
whether it is *locked* and the flags (F1–F20) that bear on it. The notebooks in
`notebooks/` compute each claim from an atlas and record it in a `ClaimsTable`, which shows
one row `claim id | statement | paper value | this atlas | status` per claim.

Which atlas (`locate_atlas`):
    1. `$CSP_ATLAS_DATA_ROOT` — any folder holding the release files (the real Hub release,
       downloaded, works unchanged; so does our export or a raw build folder);
    2. else `build/CSP-Atlas` under the repository root (what `make atlas` writes);
    3. else the `tiny` atlas, built once into `build/.cache/tiny-atlas` and reused (falls back
       to the synthetic fixture generator where the pipeline cannot run) — and the notebooks say so.

Golden checks (`is_release`): on the real release every LOCKED claim is asserted within its
tolerance and a failure raises `GoldenCheckFailed`; unlocked claims show "match"/"MISMATCH".
On any other atlas nothing is compared with the paper ("comparison only"), but the internal
consistency checks (`ClaimsTable.check_internal`) are asserted on every atlas.

Release rule. An atlas is the release when
    (a) it holds 1,276 pairs (pair masks in `13_object_masks_eps0.5_cons0.8.h5`) AND 63,800 object
        prompts (rows of `11A_object_prompts.parquet`), AND
    (b) its provenance names `openai/circuit-sparsity` — read from the first source present:
        `atlas_manifest.json` (build.model.id of a Hub model), `/metadata` attr `model_id` of
        `12_object_activations.h5`, `/metadata` attr `model_id` of `universal_106x50.h5`;
        where none of them exists (the Hub release may ship without activations and without a
        manifest), (b) holds only when `CSP_ATLAS_RELEASE=1` is set.
    `CSP_ATLAS_RELEASE=0` turns the golden checks off whatever the files say; `=1` never
    overrides a provenance record naming another model.

Tolerance policy (PAPER_CLAIMS §0): counts (integer paper values) exact; values printed as
x.x % ±0.05 pp; printed to 1 dp ±0.05; to 2 dp ±0.005; to 4–6 dp ±1e-4. Booleans and names exact.

Test hook: `CSP_ATLAS_PAPER_OVERRIDES='{"N04": 1275}'` replaces paper values (JSON, by claim id),
so a test can show that a wrong value makes a notebook fail.

Re-execute the notebooks in place (after `make atlas`, so they run on build/CSP-Atlas):

    jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from builder_utils import layout
from builder_utils.concepts import ATOMICITY_AST, KEYWORD_MAP, concept_key, concept_type

# ----------------------------------------------------------------------------- constants

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ATLAS = REPO_ROOT / "build" / "CSP-Atlas"
TINY_CACHE = REPO_ROOT / "build" / ".cache" / "tiny-atlas"
FIXTURE_CACHE = REPO_ROOT / "build" / ".cache" / "fixture-atlas"

ENV_DATA_ROOT = "CSP_ATLAS_DATA_ROOT"
ENV_RELEASE = "CSP_ATLAS_RELEASE"
ENV_OVERRIDES = "CSP_ATLAS_PAPER_OVERRIDES"

RELEASE_MODEL = "openai/circuit-sparsity"
RELEASE_PAIRS = 1276
RELEASE_OBJECT_PROMPTS = 63800
LEGACY_UNIVERSALS = "universal_106x50.h5"     # the 3A/4/5B input; not in every release (PAPER_CLAIMS §0)

# absolute tolerance per printed precision (PAPER_CLAIMS §0)
TOLERANCES: dict[str, float] = {"exact": 0.0, "pp": 0.05, "1dp": 0.05, "2dp": 0.005, "4dp": 1e-4}
FLOAT_SLACK = 1e-9        # so a value exactly on the tolerance edge counts as inside

MODULAR = tuple(concept_key("ast", n) for n in ATOMICITY_AST)      # the WU/5B "modular" six
GROUPS = ("modular", "non-modular", "builtin")                     # WU §7.4–7.5 groups of the 58


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    statement: str
    paper: Any = None               # number | {part: number/str/bool} | str | bool | None (no printed value)
    tolerance: str = "exact"        # a key of TOLERANCES, applied to non-integer numbers
    locked: bool = False            # asserted on the real release
    flags: tuple[str, ...] = ()
    kind: str = "value"             # value | recompute (no paper value) | arithmetic | descriptive
    paper_text: str | None = None   # how the paper value is shown, when the value itself is unwieldy


def _grid(ast: list[float], blt: list[float]) -> dict[str, float]:
    out = {}
    for (e, c), a, b in zip(layout.SETTINGS, ast, blt):
        out[f"{e}/{c} AST"] = a
        out[f"{e}/{c} builtin"] = b
    return out


def _per_layer(rows: dict[str, list[float]]) -> dict[str, float]:
    return {f"{name} L{l}": v for name, vals in rows.items() for l, v in enumerate(vals)}


_T01 = _grid([1.7, 3.4, 7.7, 9.5, 9.6, 12.1, 12.3, 12.5, 11.6], [0.4, 1.1, 1.5, 1.5, 1.7, 2.1, 2.1, 2.2, 1.3])
_T08 = _per_layer({"modular": [8.1, 0.1, 4.9, 23.1, 26.9, 30.4, 23.4, 17.6],
                   "non-modular": [4.7, 0.0, 3.2, 6.3, 8.4, 9.0, 9.7, 6.1],
                   "builtin": [0.9, 0.0, 2.0, 1.8, 4.9, 3.0, 4.4, 2.6]})
_L01 = _per_layer({"pairs": [385.6, 498.7, 496.8, 280.1, 247.8, 206.3, 265.8, 290.9],
                   "AST": [263.1, 460.4, 422.1, 138.8, 131.7, 91.1, 128.7, 174.7],
                   "builtin": [238.6, 452.4, 401.9, 96.5, 93.9, 53.8, 88.5, 138.0]})

_C = Claim
CLAIMS: tuple[Claim, ...] = (
    # §1 concept space and counts -------------------------------------------------------------
    _C("N01", "§3.2", "43 AST node types", 43, locked=True),
    _C("N02", "§3.2", "63 builtin objects", 63, locked=True, flags=("F1",)),
    _C("N03", "§3.2", "106 concepts = 43 + 63, one universal circuit each, at every setting", 106,
       locked=True, flags=("F2",)),
    _C("N04", "§3.1", "1,276 (AST, builtin) pairs", 1276, locked=True, flags=("F3",)),
    _C("N05", "§4.1", "50 prompts per pair, 63,800 object prompts", {"prompts": 63800, "per pair": 50},
       locked=True, flags=("F4",)),
    _C("N06", "Finding 1", "10,208 layer-level pair masks (1,276 × 8)", 10208, locked=True),
    _C("N07", "§4.2", "58 testable (keyword) concepts = 24 AST + 34 builtins",
       {"testable": 58, "AST": 24, "builtin": 34}, locked=True),
    _C("N08", "§4.2", "48 tokenless concepts = 19 AST + 29 builtins",
       {"tokenless": 48, "AST": 19, "builtin": 29}, locked=True),
    _C("N09", "dataset card", "2,848 checker prompts (11B)", 2848, flags=("F20",)),
    _C("N10", "dataset card", "2,861 token-checker prompts (5A)", 2861, flags=("F20",)),
    _C("N11", "§4.3", "checker design: 50 prompts per object, 5 categories × 10, overshoot ×3",
       {"max per object": 50}, kind="descriptive"),
    _C("N12", "§3.5", "9 (ε, C) settings; 18 mask files (9 object + 9 checker)",
       {"settings": 9, "mask files": 18}, locked=True),
    _C("N13", "§3.5", "consistency C of 50 prompts: 80% = ≥40, 50% = ≥25, 20% = ≥10",
       {"C=0.8": 40, "C=0.5": 25, "C=0.2": 10}, kind="arithmetic"),
    _C("N14", "§5.2", "464 decomposition rows (58 concepts × 8 layers) per setting", 464, locked=True),
    _C("N15", "§3.3", "8 layers × 2048 MLP-output dimensions", {"layers": 8, "width": 2048}, locked=True),
    # §2 survival and stability ---------------------------------------------------------------
    _C("S01", "§7.1", "all 106 universal circuits non-empty (at ≥ 1 layer) at all 9 settings",
       {"settings with 106/106 non-empty": 9}, locked=True, flags=("F5",)),
    _C("S02", "Finding 1", "100% survival at ε=0.001, C=0.8: 43/43 AST and 63/63 builtin universals",
       {"AST non-empty": 43, "builtin non-empty": 63}, locked=True),
    _C("S03", "Finding 1", "0 empty pair masks out of 10,208 at ε=0.001, C=0.8",
       {"empty": 0, "pair masks": 10208}, locked=True),
    _C("S04", "WU §6.3", "58 testable concepts non-empty at all 9 settings; 0/464 empty (concept, layer) "
                         "cells at ε=0.001, C=0.8",
       {"settings with 58/58 non-empty": 9, "empty cells at 0.001/0.8": 0, "cells": 464}, locked=True),
    # §3 concept vs token -------------------------------------------------------------------
    _C("T01", "WU §7.3", "pooled concept fraction Σco/Σ(co+sh), 24 AST vs 34 builtins, 3×3 grid (%)",
       _T01, tolerance="pp", locked=True,
       paper_text="AST 1.7–12.5 %, builtin 0.4–2.2 % (18 values)"),
    _C("T02", "§7.2", "AST concept fraction exceeds builtin by 4–9× at every setting",
       {"settings in [4, 9]× (pooled)": 9}, flags=("F6",)),
    _C("T03", "14_summary.csv", "14_summary.csv = mean-of-rows recomputation (58/24/34 testable)",
       kind="recompute"),
    _C("T04", "WU §7.3", "AST circuits contain concept-only neurons at every setting",
       {"settings with AST Σco > 0": 9}, locked=True),
    _C("T05", "WU §7.4", "loudest neurons at ε=0.5, C=0.8, L5 (pooled co / sh per group)",
       {"modular co": 10, "modular sh": 6, "non-modular co": 32, "non-modular sh": 23,
        "builtin co": 0, "builtin sh": 36}, locked=True),
    _C("T06", "dataset card", "AST circuits reach up to 62.5% concept-only (modular, L5, ε=0.5)", 62.5,
       tolerance="pp", flags=("F7",)),
    _C("T07", "WU §7.4", "every builtin concept-only neuron vanishes at ε=0.5 (C=0.8)",
       {"builtin co, L5": 0, "builtin co, all layers": 0}, flags=("F8",)),
    _C("T08", "WU §7.5", "layer profile at ε=0.001, C=0.8, pooled per group (%)", _T08, tolerance="pp",
       locked=True, paper_text="modular peaks 30.4 % at L5 (24 values)"),
    _C("T09", "WU §7.5", "L1 ≈ 0 for all groups; modular peaks at L5; rises L1→L5 then falls",
       {"L1 ≤ 0.1% (all groups)": True, "modular peak layer": 5, "rise then fall": True}, locked=True),
    _C("T10", "WU §7.6", "four tiers: 19 tokenless AST / 6 modular / 18 non-modular AST / 63 builtins",
       {"tokenless AST": 19, "modular": 6, "non-modular AST": 18, "builtins": 63, "total": 106},
       locked=True, flags=("F7",)),
    _C("T11", "WU §5.3", "ast__Assert at L3: 91 concept-only, 233 shared, 38 token-only (28%)",
       {"co": 91, "sh": 233, "to": 38}),
    # §4 modularity -------------------------------------------------------------------------
    _C("M01", "§7.3 / §6.1", "ast__Break has the highest p=0 relaxed-modularity score, 3",
       {"top scorer": "ast__Break", "score": 3}, locked=True),
    _C("M02", "§7.3 / §6.1", "top 3 by p=0 = {Break, ImportFrom, Assert}",
       {"top 3": "ast__Assert, ast__Break, ast__ImportFrom"}, locked=True, flags=("F9",)),
    _C("M03", "§7.3", "top of the relaxed ranking = the atomicity six",
       {"atomicity six in the top 6 (p=0)": 6}, flags=("F9",)),
    _C("M04", "4B", "relaxed per-p summary (score > 0, max, shifts p=0 → 0.25)", kind="recompute"),
    _C("M05", "Finding 2", "notebook-4 scores: Import 7, Break 6, Pass 6, ImportFrom 5, Continue 4 (of 8)",
       {"ast__Import": 7, "ast__Break": 6, "ast__Pass": 6, "ast__ImportFrom": 5, "ast__Continue": 4},
       flags=("F10",)),
    _C("M06", "Finding 2", "12/106 score > 0, all AST; 31/43 AST score 0; no builtin distinctive",
       {"score > 0": 12, "AST score > 0": 12, "AST score 0": 31, "builtin score > 0": 0}, flags=("F11",)),
    _C("M07", "Finding 2 (old)", "mean notebook-4 score: AST 0.8, builtin 0.0",
       {"AST mean": 0.8, "builtin mean": 0.0}, tolerance="1dp"),
    _C("M08", "Finding 2", "null expectation for 12 hits: ≈5 AST (43/106), ≈7 builtin (63/106)",
       {"AST": 4.87, "builtin": 7.13}, tolerance="2dp", kind="arithmetic"),
    _C("M09", "Finding 2", "P(≥ 7 of 8 layers) < 0.00001% (independent layers, p = 0.05)",
       {"P < 1e-7": True}, kind="arithmetic"),
    _C("M10", "Finding 2", "mean Jaccard to others: AST ≈ 0.36–0.46, builtins ≈ 0.49–0.56",
       {"AST min": 0.36, "AST max": 0.46, "builtin min": 0.49, "builtin max": 0.56}, tolerance="2dp"),
    _C("M11", "Finding 2", "method: 106 objects, 500 permutations, 8 layers, p < 0.05",
       {"objects": 106, "draws": 500, "layers": 8, "alpha": 0.05}, tolerance="2dp", kind="descriptive",
       flags=("F13",)),
    _C("M12", "5B", "MODULAR = {Import, Break, Pass, ImportFrom, Continue, Assert}, 'score > 0'",
       {"MODULAR size": 6}, kind="descriptive", flags=("F14",)),
    # §5 atomicity and Figure 1 --------------------------------------------------------------
    _C("A01", "§7.3 / §6.1", "the atomicity six form one cluster at L3 (Ward, k=4, ε=0.5, C=0.8)",
       {"cluster ids of the six": 1}, locked=True),
    _C("A02", "test docstring", "that L3 cluster has 8 members: the six + ast__Raise + builtin___isolated_",
       {"cluster size": 8, "others": "ast__Raise, builtin___isolated_"}),
    _C("A03", "v2 §6", "paper says layer 5; at L5 (k=4) the six split across 3 clusters",
       {"cluster ids of the six at L5": 3}, flags=("F15",)),
    _C("A04", "Figure 1", "Figure 1: Ward on 1 − Jaccard of universal masks, layer 3, k = 4",
       {"layer": 3, "k": 4}, kind="descriptive", flags=("F16",)),
    _C("A05", "method", "each atomicity universal = its _isolated_ pair mask; builtin___isolated_ = their AND",
       {"six un-marginalised": True, "_isolated_ = AND": True}, locked=True, flags=("F17",)),
    _C("A06", "New-Atlas", "super-cluster cited as Import, Break, Pass, Continue, Assert (5)",
       {"cited": 5, "missing from the six": "ast__ImportFrom"}, kind="arithmetic"),
    # §6 layer evolution ---------------------------------------------------------------------
    _C("L01", "Finding 3", "mean circuit size per layer: pairs, AST and builtin universals (ε=0.001, C=0.8)",
       _L01, tolerance="1dp", paper_text="pairs 385.6 … 290.9; AST 263.1 … 174.7; builtin 238.6 … 138.0"),
    _C("L02", "Finding 3", "inverted U: peak at L1–2, minimum at L5, re-expansion at L6–7 (all 3 series)",
       {"peak in L1–L2": True, "minimum at L5": True, "L6, L7 > L5": True}),
    _C("L03", "Finding 3", "builtins compress more: L5 builtin 53.8 vs AST 91.1",
       {"builtin L5": 53.8, "AST L5": 91.1}, tolerance="1dp"),
    _C("L04", "Finding 3", "pair circuits larger than universal circuits at every layer",
       {"pairs > AST and builtin at all layers": True}),
    _C("L05", "3A", "cross-check: universal_106x50.h5 = 13_object_masks_eps0.001_cons0.8.h5", kind="recompute"),
    # §7 entanglement ------------------------------------------------------------------------
    _C("E01", "Finding 4", "entanglement index E_I at L4 over 1,276 pairs",
       {"pairs": 1276, "mean": 0.568256, "std": 0.078858, "min": 0.0, "25%": 0.553191, "50%": 0.590909,
        "75%": 0.6125, "max": 0.718663}, tolerance="4dp"),
    _C("E02", "Finding 4", "only 0.47% of pairs (6/1,276) have E_I < 0.2, all isolated",
       {"fraction": 0.004702, "pairs": 6}, tolerance="4dp", flags=("F18",)),
    _C("E03", "Finding 4", "most compositional real pairs: UnaryOp×complex, Set×float, Raise×FileNotFoundError",
       {"UnaryOp__complex": 0.295019, "Set__float": 0.300429, "Raise__FileNotFoundError": 0.333333},
       tolerance="4dp", flags=("F18",)),
    _C("E04", "Finding 4", "least compositional: AnnAssign×float, AnnAssign×bool, Compare×bool",
       {"AnnAssign__float": 0.718663, "AnnAssign__bool": 0.707736, "Compare__bool": 0.6875}, tolerance="4dp"),
    # §8 other 3A values ---------------------------------------------------------------------
    _C("J01", "3A", "universal modules at L4: 43 AST, 63 builtin", {"AST": 43, "builtin": 63}),
    _C("J02", "3A", "AST Jaccard at L4 (903 pairs): mean 0.5091, max 0.7861, 585 > 0.5",
       {"mean": 0.5091, "max": 0.7861, "J > 0.5": 585}, tolerance="4dp"),
    _C("J03", "3A", "builtin Jaccard at L4 (1,953 pairs): mean 0.6440, max 0.8523, 1,794 > 0.5",
       {"mean": 0.6440, "max": 0.8523, "J > 0.5": 1794}, tolerance="4dp"),
    _C("J04", "3A", "Ockham index O_I = 1 − J over 903 AST pairs at L4; most similar Break–ImportFrom",
       {"pairs": 903, "mean": 0.490856, "std": 0.149461, "min": 0.213904, "25%": 0.383883, "50%": 0.442478,
        "75%": 0.604456, "max": 0.818182, "most similar": "Break–ImportFrom"}, tolerance="4dp"),
    # §9 token independence ------------------------------------------------------------------
    _C("K01", "5B", "comparison rows 464 (58 × 8), 58 objects, 48 no-keyword",
       {"rows": 464, "objects": 58, "no-keyword": 48}),
    _C("K02", "5B", "overall mean concept-only and token-overlap fractions", kind="recompute"),
    _C("K03", "5B", "mean fractions by type (AST, builtin)", kind="recompute"),
    _C("K04", "5B", "mean fractions of the MODULAR six", kind="recompute"),
    _C("K05", "5B", "circuits with token_fraction > 0.5 at some layer", kind="recompute"),
    _C("K06", "5B", "token_independence_summary.csv = per-object means (4 dp)", kind="recompute"),
)
del _C

CLAIMS_BY_ID: dict[str, Claim] = {c.id: c for c in CLAIMS}
if len(CLAIMS_BY_ID) != len(CLAIMS):
    raise RuntimeError("duplicate claim id in the registry")

# The flags of PAPER_CLAIMS §12, one line each.
FLAGS: dict[str, str] = {
    "F1": "'63 builtins' counts the `_isolated_` sentinel (62 real builtins)",
    "F2": "'106 testable concepts' clashes with the 58 testable keyword concepts",
    "F3": "'43 × 63 = 1,276' is false (2,709); 1,276 = 1,297 compatible pairs − 21 failed",
    "F4": "'100 variations' / '80 of 100'; the data has 50 per pair (40 of 50)",
    "F5": "the locked survival test needs only ≥ 1 non-empty layer per concept",
    "F6": "'4–9× at every setting' fails at ε=0.001, C=0.5 in the paper's own table (3.1×)",
    "F7": "'up to 62.5%' is a pooled 6-concept L5 value, not a maximum",
    "F8": "builtin concept-only neurons vanish at ε=0.5 only at L5, not over all layers",
    "F9": "only 3 of the atomicity six top the p=0 ranking; the rest tie at low scores",
    "F10": "notebook-4 scores (Import 7/8) conflict with the locked relaxed CSV (Break = 3)",
    "F11": "Finding 2 text history: 'all 12 are AST' vs 'float and _isolated_ reached 1/8'",
    "F12": "binarisation described per prompt; the code thresholds the mean and the firing rate",
    "F13": "'500 permutations' is a bootstrap of population values / a deterministic percentile",
    "F14": "the MODULAR six are called 'score > 0', but 12 circuits have score > 0",
    "F15": "the atomicity cluster is at L3, not at L5 as the paper text says",
    "F16": "Figure 1 clusters full universal masks, not concept-only masks; k = 4, not 6",
    "F17": "the atomicity six are exactly the un-marginalised `_isolated_` concepts",
    "F18": "E_I < 0.2 are all six isolated pairs; Set×bool omitted from the list",
    "F19": "mis-descriptions of token_independence_no_keyword and notebook 4",
    "F20": "the 2,848 / 2,861 prompt counts and their file mapping are inferred",
}


def claim_ids(prefixes: Iterable[str] | str | None = None) -> list[str]:
    """Registry ids in order, optionally only those starting with one of `prefixes` (e.g. "N" or "LEJ")."""
    if prefixes is None:
        return [c.id for c in CLAIMS]
    prefixes = tuple(prefixes)
    return [c.id for c in CLAIMS if c.id[0] in prefixes]


def _overrides() -> dict[str, Any]:
    raw = os.environ.get(ENV_OVERRIDES, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"${ENV_OVERRIDES} is not valid JSON: {exc}") from None
    unknown = sorted(set(data) - set(CLAIMS_BY_ID))
    if not isinstance(data, dict) or unknown:
        raise ValueError(f"${ENV_OVERRIDES} must map claim ids to values; unknown ids {unknown}")
    return data


def get_claim(claim_id: str) -> Claim:
    """The registry entry, with a test override of its paper value applied if one is set."""
    if claim_id not in CLAIMS_BY_ID:
        raise KeyError(f"unknown claim id {claim_id!r}")
    claim = CLAIMS_BY_ID[claim_id]
    ov = _overrides()
    if claim_id in ov:
        claim = replace(claim, paper=ov[claim_id], paper_text=None)
    return claim


# ----------------------------------------------------------------------------- tolerance


def _is_count(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def within_tolerance(paper, value, tolerance: str = "exact") -> bool:
    """Does `value` reproduce `paper`? Integer paper values are counts (exact); other numbers get the
    claim's tolerance; dicts compare key by key (a missing key fails); anything else must be equal."""
    if tolerance not in TOLERANCES:
        raise ValueError(f"unknown tolerance {tolerance!r}; one of {sorted(TOLERANCES)}")
    if isinstance(paper, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(k in value and within_tolerance(p, value[k], tolerance) for k, p in paper.items())
    if value is None:
        return False
    if _is_number(paper):
        if not _is_number(value) or (isinstance(value, float) and math.isnan(value)):
            return False
        if _is_count(paper):
            return float(value) == float(paper)
        return abs(float(value) - float(paper)) <= TOLERANCES[tolerance] + FLOAT_SLACK
    if isinstance(paper, (bool, np.bool_)):
        return isinstance(value, (bool, np.bool_)) and bool(value) == bool(paper)
    return value == paper


def max_drift(paper, value) -> float | None:
    """Largest |value − paper| over the numeric parts both share (None when nothing is comparable)."""
    if isinstance(paper, Mapping) and isinstance(value, Mapping):
        drifts = [max_drift(p, value[k]) for k, p in paper.items() if k in value]
        drifts = [d for d in drifts if d is not None]
        return max(drifts) if drifts else None
    if _is_number(paper) and _is_number(value) and not (isinstance(value, float) and math.isnan(value)):
        return abs(float(value) - float(paper))
    return None


# ----------------------------------------------------------------------------- where the atlas is


@dataclass
class ReleaseStatus:
    release: bool
    reason: str
    model_id: str | None
    n_pairs: int | None
    n_object_prompts: int | None


@dataclass
class AtlasLocation:
    """An atlas folder (raw release files at `root`) and how it was found."""

    root: Path
    source: str                    # a sentence: where it came from
    status: ReleaseStatus
    export_dir: Path | None = None  # `root` when it is a Hub export (data/<config>/*.parquet + README.md)
    notes: list[str] = field(default_factory=list)

    @property
    def release(self) -> bool:
        return self.status.release

    def file(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    @property
    def has_activations(self) -> bool:
        return self.has(layout.OBJECT_ACTIVATIONS)

    def legacy_universals(self) -> Path:
        """The 3A/4/5B input: `universal_106x50.h5` when shipped, else its stated equivalent (§0)."""
        legacy = self.root / LEGACY_UNIVERSALS
        return legacy if legacy.is_file() else self.root / layout.object_masks_name(*layout.TOKEN_CHECKER_SETTING)

    def describe(self) -> str:
        lines = [f"atlas: {_shown_path(self.root)}", f"  found: {self.source}"]
        lines += [f"  note: {n}" for n in self.notes]
        s = self.status
        lines.append(f"  pairs: {s.n_pairs}, object prompts: {s.n_object_prompts}, model: {s.model_id or 'unknown'}")
        lines.append(f"  export (load_dataset-ready): {'yes' if self.export_dir else 'no (raw files only)'}")
        lines.append(f"  activations present: {self.has_activations}")
        lines.append(("  GOLDEN CHECKS ON — this is the release: " if s.release else
                      "  comparison only — not the release: ") + s.reason)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _shown_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it (committed notebook outputs stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _count_pairs(root: Path) -> int | None:
    for e, c in (layout.REFERENCE_SETTING, *layout.SETTINGS):
        path = root / layout.object_masks_name(e, c)
        if path.is_file():
            try:
                with h5py.File(path, "r") as f:
                    return len(f[f"{layout.G_PAIR}/layer_0"])
            except (OSError, KeyError) as exc:
                raise layout.AtlasFileError(path, f"cannot count pair masks: {exc}") from None
    return None


def _count_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise layout.AtlasFileError(path, f"unreadable parquet: {exc}") from None


def _h5_model_id(path: Path) -> str | None:
    if not path.is_file():
        return None
    with layout.open_h5(path) as f:
        md = f.get(layout.G_METADATA)
        v = md.attrs.get("model_id") if md is not None else None
    if isinstance(v, bytes):
        v = v.decode()
    return str(v) if v not in (None, "") else None


def provenance_model(root: os.PathLike | str) -> tuple[str | None, str | None]:
    """(model id, where it was read) from the first provenance record present, else (None, None)."""
    root = Path(root)
    manifest = root / layout.MANIFEST
    if manifest.is_file():
        try:
            model = json.loads(manifest.read_text(encoding="utf-8"))["build"]["model"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise layout.AtlasFileError(manifest, f"no build.model record: {exc}") from None
        if model.get("source") == "hub":
            return str(model.get("id")), layout.MANIFEST
        return f"local model ({model.get('path', '?')})", layout.MANIFEST
    for name in (layout.OBJECT_ACTIVATIONS, LEGACY_UNIVERSALS):
        model_id = _h5_model_id(root / name)
        if model_id:
            return model_id, f"{name} /metadata"
    return None, None


def release_status(root: os.PathLike | str) -> ReleaseStatus:
    """Apply the release rule of the module docstring, with the reason in words."""
    root = Path(root)
    n_pairs = _count_pairs(root)
    n_prompts = _count_rows(root / layout.OBJECT_PROMPTS)
    model_id, where = provenance_model(root)
    env = os.environ.get(ENV_RELEASE, "").strip()

    def status(release: bool, reason: str) -> ReleaseStatus:
        return ReleaseStatus(release, reason, model_id, n_pairs, n_prompts)

    if env == "0":
        return status(False, f"${ENV_RELEASE}=0")
    if n_pairs != RELEASE_PAIRS or n_prompts != RELEASE_OBJECT_PROMPTS:
        return status(False, f"{n_pairs} pairs / {n_prompts} object prompts "
                             f"(the release has {RELEASE_PAIRS:,} / {RELEASE_OBJECT_PROMPTS:,})")
    if where is not None:
        if model_id == RELEASE_MODEL:
            return status(True, f"release counts and model {RELEASE_MODEL} ({where})")
        return status(False, f"release counts, but {where} names model {model_id!r}")
    if env == "1":
        return status(True, f"release counts, no provenance record, ${ENV_RELEASE}=1")
    return status(False, f"release counts but no provenance record naming the model "
                         f"(set ${ENV_RELEASE}=1 to run the golden checks)")


def is_release(root: os.PathLike | str) -> bool:
    """True when `root` is the real release (see the module docstring for the rule)."""
    return release_status(root).release


def _is_export(root: Path) -> bool:
    return (root / "README.md").is_file() and any((root / "data").glob("*/*.parquet"))


def _atlas_complete(root: Path) -> bool:
    return all((root / n).is_file() for n in layout.release_file_names(include_activations=False))


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Serialise concurrent builds (several notebooks may start at once)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tiny_atlas(cache: Path, notes: list[str]) -> tuple[Path, str]:
    root = cache / "CSP-Atlas"
    with _build_lock(cache):
        if _atlas_complete(root):
            return root, f"no ${ENV_DATA_ROOT} and no {_shown_path(DEFAULT_ATLAS)}: reusing the cached tiny atlas " \
                         f"(delete {_shown_path(cache)} to rebuild it)"
        try:
            from builder_utils import pipeline

            t0 = time.perf_counter()
            log: list[str] = []
            with contextlib.redirect_stderr(io.StringIO()):       # progress bars of every stage
                result = pipeline.build_atlas("tiny", cache, log=log.append)
            notes.append(f"built in {time.perf_counter() - t0:.0f} s ({len(log)} log lines)")
            return result.export_dir, f"no ${ENV_DATA_ROOT} and no {_shown_path(DEFAULT_ATLAS)}: " \
                                      f"BUILT the tiny atlas into {_shown_path(cache)}"
        except (ImportError, NotImplementedError) as exc:
            notes.append(f"the pipeline cannot run here ({type(exc).__name__}: {exc})")
    fixture_root = FIXTURE_CACHE
    with _build_lock(fixture_root):
        if not _atlas_complete(fixture_root):
            from builder_utils import fixtures

            fixtures.write_fixture_atlas(fixture_root, n_pairs=40, width=64, n_prompts=10, seed=0)
    return fixture_root, f"no ${ENV_DATA_ROOT}, no {_shown_path(DEFAULT_ATLAS)} and no pipeline: " \
                         f"using a SYNTHETIC fixture atlas at {_shown_path(fixture_root)}"


def locate_atlas(*, verbose: bool = True) -> AtlasLocation:
    """Find (or build) the atlas the notebooks run on; see the module docstring for the order."""
    notes: list[str] = []
    env_root = os.environ.get(ENV_DATA_ROOT, "").strip()
    if env_root:
        root = Path(env_root).expanduser()
        if not root.is_dir():
            raise layout.AtlasFileError(root, f"${ENV_DATA_ROOT} points to a folder that does not exist")
        source = f"${ENV_DATA_ROOT} = {root}"
    elif DEFAULT_ATLAS.is_dir():
        root, source = DEFAULT_ATLAS, f"{_shown_path(DEFAULT_ATLAS)} (the `make atlas` output)"
    else:
        root, source = _tiny_atlas(TINY_CACHE, notes)
    if not (root / layout.object_masks_name(*layout.REFERENCE_SETTING)).is_file():
        raise layout.AtlasFileError(root / layout.object_masks_name(*layout.REFERENCE_SETTING),
                                    "not an atlas folder: the reference mask file is missing")
    atlas = AtlasLocation(root.resolve(), source, release_status(root), root.resolve() if _is_export(root) else None,
                          notes)
    if verbose:
        print(atlas.describe())
    return atlas


def export_table(atlas: AtlasLocation, config: str) -> pd.DataFrame | None:
    """One exported config read the way users read it (`datasets.load_dataset`), or None where the atlas
    is not a Hub export (raw release files only) or lacks that config."""
    if atlas.export_dir is None or not (atlas.export_dir / "data" / config).is_dir():
        return None
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(atlas.export_dir), config, split="train").to_pandas()


# ----------------------------------------------------------------------------- the claims table


class GoldenCheckFailed(AssertionError):
    """A locked claim is outside its tolerance on the real release."""


class InternalCheckFailed(AssertionError):
    """An internal-consistency check failed (on any atlas)."""


TABLE_COLUMNS = ["claim id", "statement", "paper value", "this atlas", "status"]


def _fmt_scalar(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if _is_count(x):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return "n/a"
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e6:
            return f"{x:.3g}"
        return f"{x:.6g}" if abs(x) < 1 else f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.1f}"
    return str(x)


def format_value(v, max_items: int = 8) -> str:
    """Short text for a table cell."""
    if isinstance(v, Mapping):
        if not v:
            return "n/a"
        if len(v) > max_items:
            return f"{len(v)} values (table above)"
        return "; ".join(f"{k}: {_fmt_scalar(x)}" for k, x in v.items())
    return _fmt_scalar(v)


class ClaimsTable:
    """The claims of one notebook: record each, show one row, assert where the rules say so.

        table = ClaimsTable(atlas, "N")          # expects every registry id starting with N
        table.record("N01", 43)                  # -> one-row DataFrame (displayed by the notebook)
        table.check_internal("106 concepts", n == 106)
        table.flag("F6", "T02", bites=True, evidence="3.4/1.1 = 3.09×")
        table.finish()                           # every expected id recorded; the full table
    """

    def __init__(self, atlas: AtlasLocation, prefixes: Iterable[str] | str):
        self.atlas = atlas
        self.expected = claim_ids(prefixes)
        if not self.expected:
            raise ValueError(f"no claims with prefix(es) {prefixes!r}")
        self.rows: dict[str, dict] = {}
        self.values: dict[str, Any] = {}
        self.internal_rows: list[dict] = []
        self.flag_rows: list[dict] = []

    # -- claims
    def status_for(self, claim: Claim, value, status: str | None) -> tuple[str, bool]:
        """(status text, failed-a-locked-golden-check)."""
        if status is not None:                       # the caller knows: "n/a (no activations)" etc.
            return status, False
        if claim.kind == "descriptive":
            return "descriptive", False
        if value is None:
            return "n/a", False
        if claim.paper is None or claim.kind == "recompute":
            return "recomputed (no paper value)", False
        ok = within_tolerance(claim.paper, value, claim.tolerance)
        if claim.kind == "arithmetic":               # about the paper's own numbers: checked on every atlas
            return ("arithmetic: match" if ok else "arithmetic: MISMATCH"), False
        if not self.atlas.release:
            return "comparison only", False
        if ok:
            return "match", False
        return ("MISMATCH (locked)" if claim.locked else "MISMATCH"), claim.locked

    def record(self, claim_id: str, value=None, *, shown: str | None = None, status: str | None = None
               ) -> pd.DataFrame:
        """Record a claim's value from this atlas; returns its one-row table.

        On the release a locked claim outside its tolerance raises GoldenCheckFailed (after the row
        is stored, so `table()` still shows it). An arithmetic claim that does not reproduce the
        paper's own arithmetic raises on every atlas.
        """
        if claim_id not in self.expected:
            raise KeyError(f"{claim_id} does not belong to this notebook (expects {self.expected})")
        if claim_id in self.rows:
            raise KeyError(f"{claim_id} recorded twice")
        claim = get_claim(claim_id)
        text, failed = self.status_for(claim, value, status)
        if claim.flags:
            text += " · flag " + ", ".join(claim.flags)
        paper = claim.paper_text or ("—" if claim.paper is None else format_value(claim.paper))
        if claim.locked:
            paper += " [locked]"
        this = shown if shown is not None else format_value(value)
        drift = max_drift(claim.paper, value) if claim.paper is not None and self.atlas.release else None
        if drift is not None and isinstance(claim.paper, Mapping) and len(claim.paper) > 1:
            this += f" (max |Δ| {_fmt_scalar(drift)})"
        self.rows[claim_id] = {"claim id": claim_id, "statement": claim.statement, "paper value": paper,
                               "this atlas": this, "status": text}
        self.values[claim_id] = value
        if failed:
            raise GoldenCheckFailed(f"{claim_id} ({claim.statement}): paper {format_value(claim.paper, 30)}, "
                                    f"this atlas {format_value(value, 30)} — outside the {claim.tolerance} "
                                    f"tolerance on the release ({self.atlas.status.reason})")
        if claim.kind == "arithmetic" and "MISMATCH" in text:
            raise InternalCheckFailed(f"{claim_id}: the paper's own arithmetic does not reproduce: "
                                      f"paper {format_value(claim.paper)}, computed {format_value(value)}")
        return self.row(claim_id)

    def row(self, claim_id: str) -> pd.DataFrame:
        return pd.DataFrame([self.rows[claim_id]], columns=TABLE_COLUMNS).set_index("claim id")

    # -- internal consistency and flags
    def check_internal(self, name: str, condition, detail: str = "") -> bool:
        """Assert an internal-consistency check (on every atlas); it is listed in `internal()`."""
        ok = bool(condition)
        self.internal_rows.append({"check": name, "result": "pass" if ok else "FAIL", "detail": detail})
        if not ok:
            raise InternalCheckFailed(f"internal check failed: {name}" + (f" ({detail})" if detail else ""))
        return ok

    def skip_internal(self, name: str, reason: str) -> None:
        """List an internal check that cannot run on this atlas (e.g. "n/a (no activations)")."""
        self.internal_rows.append({"check": name, "result": reason, "detail": ""})

    def flag(self, flag_id: str, claim_id: str, bites: bool | None, evidence: str,
             *, must_bite: bool = False) -> pd.DataFrame:
        """Record a computed check of a known flag. `must_bite=True` (for checks on the paper's own
        numbers, which do not depend on the atlas) asserts that it bites."""
        if flag_id not in FLAGS:
            raise KeyError(f"unknown flag {flag_id!r}")
        verdict = "n/a" if bites is None else ("bites" if bites else "does not bite here")
        self.flag_rows.append({"flag": flag_id, "claim": claim_id, "issue": FLAGS[flag_id],
                               "computed evidence": evidence, "verdict": verdict})
        if must_bite and not bites:
            raise InternalCheckFailed(f"flag {flag_id} ({claim_id}) should bite on the paper's own numbers: "
                                      f"{evidence}")
        return pd.DataFrame([self.flag_rows[-1]]).set_index("flag")

    # -- the full tables
    def table(self) -> pd.DataFrame:
        rows = [self.rows[i] for i in self.expected if i in self.rows]
        return pd.DataFrame(rows, columns=TABLE_COLUMNS).set_index("claim id")

    def internal(self) -> pd.DataFrame:
        return pd.DataFrame(self.internal_rows, columns=["check", "result", "detail"])

    def flags(self) -> pd.DataFrame:
        return pd.DataFrame(self.flag_rows, columns=["flag", "claim", "issue", "computed evidence", "verdict"])

    def finish(self) -> pd.DataFrame:
        """Check that every claim of the notebook was recorded; return the full claims table."""
        missing = [i for i in self.expected if i not in self.rows]
        if missing:
            raise InternalCheckFailed(f"claims never recorded: {missing}")
        return self.table()


# ----------------------------------------------------------------------------- claim glue
# Small helpers that combine the stage modules' outputs into the shapes the claims need.


def group_of(concept: str) -> str:
    """The WU §7.4–7.6 group of a keyword concept: modular / non-modular (AST) / builtin."""
    if concept_type(concept) == "builtin":
        return "builtin"
    return "modular" if concept in MODULAR else "non-modular"


def four_tiers(concepts: Iterable[str], keyword_map=KEYWORD_MAP) -> dict[str, int]:
    """WU §7.6 tiers over a concept list: tokenless AST / modular / non-modular AST / builtins."""
    concepts = list(concepts)
    ast = [c for c in concepts if concept_type(c) == "ast"]
    tiers = {"tokenless AST": sum(c not in keyword_map for c in ast),
             "modular": sum(c in MODULAR for c in ast),
             "non-modular AST": sum(c in keyword_map and c not in MODULAR for c in ast),
             "builtins": sum(concept_type(c) == "builtin" for c in concepts)}
    tiers["total"] = len(concepts)
    return tiers


def decomposition_by_setting(root: os.PathLike | str, settings=layout.SETTINGS) -> dict[tuple, pd.DataFrame]:
    """Stage-14 long rows (decomposition.decompose) of universal × checker masks, per setting."""
    from builder_utils import decomposition

    root = Path(root)
    out = {}
    for e, c in settings:
        universal = layout.read_object_masks(root / layout.object_masks_name(e, c), pairs=False).universals
        checker = layout.read_checker_masks(root / layout.checker_masks_name(e, c)).masks
        out[(e, c)] = decomposition.decompose(universal, checker)
    return out


def _pooled(rows: pd.DataFrame) -> float:
    """Σco / Σ(co + sh), in %; NaN for an empty selection (decomposition.pooled_concept_fraction)."""
    from builder_utils import decomposition

    if len(rows) == 0:
        return float("nan")
    return 100.0 * float(decomposition.pooled_concept_fraction(rows))


def pooled_grid(rows_by_setting: Mapping[tuple, pd.DataFrame]) -> pd.DataFrame:
    """T01: pooled concept fraction (%) per setting, AST vs builtin; index (ε, C)."""
    out = []
    for (e, c), rows in rows_by_setting.items():
        kinds = rows["target"].map(concept_type)
        out.append({"epsilon": e, "consistency": c, "AST": _pooled(rows[kinds == "ast"]),
                    "builtin": _pooled(rows[kinds == "builtin"])})
    return pd.DataFrame(out).set_index(["epsilon", "consistency"])


def grid_claim_value(grid: pd.DataFrame) -> dict[str, float]:
    """The T01 grid in the registry's key form (`0.001/0.2 AST`), NaN cells left out."""
    out = {}
    for (e, c), r in grid.iterrows():
        for g in ("AST", "builtin"):
            if not math.isnan(r[g]):
                out[f"{e}/{c} {g}"] = round(float(r[g]), 6)
    return out


def layer_profile(rows: pd.DataFrame) -> pd.DataFrame:
    """T08: pooled concept fraction (%) per group (rows) and layer (columns)."""
    groups = rows["target"].map(group_of)
    layers = sorted(rows["layer"].unique())
    data = {g: [_pooled(rows[(groups == g) & (rows["layer"] == l)]) for l in layers] for g in GROUPS}
    return pd.DataFrame(data, index=pd.Index(layers, name="layer")).T


def group_sums(rows: pd.DataFrame, layer: int) -> pd.DataFrame:
    """T05: Σco, Σsh, size and pooled % per group at one layer."""
    at = rows[rows["layer"] == layer]
    groups = at["target"].map(group_of)
    out = []
    for g in GROUPS:
        sel = at[groups == g]
        co, sh = int(sel["concept_only"].sum()), int(sel["shared"].sum())
        out.append({"group": g, "n_concepts": sel["target"].nunique(), "co": co, "sh": sh, "size": co + sh,
                    "concept %": 100.0 * co / (co + sh) if co + sh else float("nan")})
    return pd.DataFrame(out).set_index("group")


def ratio_count(grid: pd.DataFrame, lo: float = 4.0, hi: float = 9.0) -> tuple[int, pd.Series]:
    """T02: AST/builtin ratio per setting and how many settings fall in [lo, hi] (a 0 builtin → inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = grid["AST"] / grid["builtin"]
    return int(((ratio >= lo) & (ratio <= hi)).sum()), ratio


def fig_small(w: float = 5.0, h: float = 3.0):
    """A small figure at notebook dpi, so committed notebooks stay small."""
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h), dpi=80)
