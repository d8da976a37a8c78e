"""Stage 13 — binarise activations into masks, marginalise pair masks into universal masks.

ALGORITHMS.md §6 (and §4 for the 5A token-checker masks). Per unit (pair or checker
object), layer and channel, with n = the unit's prompt count:

    mask = (activation_sum / n > ε) & (firing_count / n >= C)        both sides in float32

ε is strict and applies to the mean |act| over all prompts; C is non-strict and applies to
the rate of exactly non-zero outputs. The comparison happens in float32, as numpy does
for a float32 array against a Python float (ε = 0.1 means float32(0.1)).

Universal masks (§6 "Marginalisation"): AST X = AND of the pair masks (X, b) over every pair
*present* for X; builtin Y = AND over every present (a, Y). A concept with one pair (the six
isolated AST nodes) keeps that pair mask unchanged.

Everything is vectorised over units, layers and channels. Two exact rewrites make the
9-setting sweep cheap (and are checked against the literal formula in tests/test_masks.py):

* x ↦ fl32(x / n) is monotone, so `fl32(sum / n) > ε` ⇔ `sum > t`, with t the largest float32
  for which fl32(t / n) <= ε. t is found once per distinct n (a binary search over float32 bit
  patterns), and the 21 M sums are compared without dividing them for every setting.
* likewise `fl32(count / n) >= C` ⇔ `count >= k`, with k the smallest such count.

The sweep works through cache-sized blocks of units on all cores. Marginalisation ANDs
bit-packed masks with one `bitwise_and.reduceat` per concept kind; Jaccard counts by popcount.
"""

from __future__ import annotations

import functools
import logging
import os
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from builder_utils import layout
from builder_utils.concepts import concept_key, split_concept_key, split_pair_key
from builder_utils.layout import (Activations, AtlasFileError, CheckerMasks, MaskStack, ObjectMasks,
                                  read_activations, write_checker_masks, write_object_masks)

log = logging.getLogger(__name__)

Setting = tuple[float, float]

# 5A stored the target prompt count, not the real one, as `n_prompts_per_object` (§13 item 17);
# the real counts go to /generation_stats.
TOKEN_CHECKER_N_TARGET = 50

_FLOAT32_INF_BITS = 0x7F800000   # bit pattern of +inf; non-negative float32 bit patterns sort like their values
_BLOCK_ELEMENTS = 1 << 18         # (unit, layer, channel) values per block of the sweep: ~1 MB of float32
_THREADS = min(4, os.cpu_count() or 1)
# Writing is bound by HDF5's per-dataset cost in one process (h5py serialises on a global lock), so a
# large sweep writes its files from parallel processes; below this many datasets, starting them costs more.
_WRITE_PROCESSES = min(2, os.cpu_count() or 1)
_PARALLEL_WRITE_MIN_DATASETS = 50_000


# ----------------------------------------------------------------------------- thresholds


def _check_setting(epsilon: float, consistency: float) -> None:
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if not (0 <= consistency <= 1):
        raise ValueError(f"consistency must be in [0, 1], got {consistency!r}")


def mean_cutoffs(n_prompts: np.ndarray, epsilon: float) -> np.ndarray:
    """Per n: the largest float32 t with fl32(t / n) <= float32(ε), so `sum > t` ⇔ `fl32(sum / n) > ε`."""
    n = np.asarray(n_prompts).astype(np.float32)
    eps = np.float32(epsilon)
    lo = np.zeros(n.shape, np.int64)                           # 0.0 always satisfies (ε >= 0)
    hi = np.full(n.shape, _FLOAT32_INF_BITS, np.int64)         # +inf never does
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        ok = mid.astype(np.int32).view(np.float32) / n <= eps
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return lo.astype(np.int32).view(np.float32)


def count_cutoffs(n_prompts: np.ndarray, consistency: float) -> np.ndarray:
    """Per n: the smallest count k with fl32(k / n) >= float32(C), so `count >= k` ⇔ `fl32(count / n) >= C`."""
    n_prompts = np.asarray(n_prompts, dtype=np.int64)
    cons = np.float32(consistency)
    out = np.empty(n_prompts.shape, np.int64)
    for n in np.unique(n_prompts):                            # a handful of distinct counts, not one per unit
        rates = np.arange(n + 1, dtype=np.float32) / np.float32(n)
        out[n_prompts == n] = int(np.argmax(rates >= cons))   # rates[n] = 1 >= C, so argmax finds one
    return out


def threshold_sweep(acts: Activations, settings: Iterable[Setting] = layout.SETTINGS) -> dict[Setting, MaskStack]:
    """Masks of every unit at every (ε, C) setting.

    Works through blocks of units small enough to stay in cache (on all cores: numpy releases
    the GIL): each distinct ε and C is compared once per block, each setting is one AND of the two.
    """
    settings = list(dict.fromkeys((float(e), float(c)) for e, c in settings))
    for e, c in settings:
        _check_setting(e, c)
    n = np.asarray(acts.n_prompts, dtype=np.int64)
    if (n <= 0).any():
        raise ValueError(f"unit {acts.keys[int(np.argmin(n))]!r} has n_prompts <= 0")
    sums = np.asarray(acts.activation_sum, dtype=np.float32)       # the release stores float32 sums
    counts = np.asarray(acts.firing_count)
    mean_cut = {e: mean_cutoffs(n, e)[:, None, None] for e in dict.fromkeys(e for e, _ in settings)}
    count_cut = {c: count_cutoffs(n, c).astype(counts.dtype)[:, None, None]
                 for c in dict.fromkeys(c for _, c in settings)}
    out = np.empty((len(settings),) + sums.shape, bool)            # one allocation for all settings' masks

    def one_block(lo: int) -> None:
        hi = lo + step
        mean_pass = {e: np.greater(sums[lo:hi], cut[lo:hi]) for e, cut in mean_cut.items()}
        rate_pass = {c: np.greater_equal(counts[lo:hi], cut[lo:hi]) for c, cut in count_cut.items()}
        for i, (e, c) in enumerate(settings):
            np.logical_and(mean_pass[e], rate_pass[c], out=out[i, lo:hi])

    step = max(1, _BLOCK_ELEMENTS // max(1, sums[0].size if len(sums) else 1))
    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(one_block, range(0, len(sums), step)))
    return {s: MaskStack(list(acts.keys), out[i]) for i, s in enumerate(settings)}


def threshold_masks(acts: Activations, epsilon: float, consistency: float) -> MaskStack:
    """`(activation_sum / n > ε) & (firing_count / n >= C)` in float32 (§6), for every unit and layer."""
    return threshold_sweep(acts, [(epsilon, consistency)])[(float(epsilon), float(consistency))]


# ----------------------------------------------------------------------------- marginalisation


def _pack(masks: np.ndarray) -> np.ndarray:
    """(U, L, W) bool -> (U, L, B) uint64 words (zero-padded), so an AND handles 64 channels at once."""
    packed = np.packbits(masks, axis=-1)
    pad = -packed.shape[-1] % 8
    if pad:
        packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view(np.uint64)


def _unpack(words: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), axis=-1, count=width).view(bool)


def _runs(labels: list[str]) -> tuple[list[str], np.ndarray | None, np.ndarray]:
    """Sorted distinct labels, the row order that makes each label's rows contiguous (None if they
    already are), and where each label's run starts."""
    names = sorted(set(labels))
    index = {g: i for i, g in enumerate(names)}
    group = np.fromiter((index[g] for g in labels), dtype=np.int64, count=len(labels))
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(names)))
    return names, (None if (order == np.arange(len(order))).all() else order), starts


@functools.lru_cache(maxsize=8)
def _concept_runs(pair_keys: tuple[str, ...]) -> list[tuple[str, list[str], np.ndarray | None, np.ndarray]]:
    """Per concept kind: (kind, names, order, starts) over the pair keys. Cached: a sweep
    marginalises the same keys at every setting."""
    split = [split_pair_key(k) for k in pair_keys]
    return [("ast", *_runs([a for a, _ in split])), ("builtin", *_runs([b for _, b in split]))]


def marginalise(pairs: MaskStack) -> MaskStack:
    """Universal masks `ast__X` (AND over X's present pairs) and `builtin__Y` (AND over Y's present pairs)."""
    if not pairs.keys:
        return MaskStack([], np.zeros((0,) + pairs.masks.shape[1:], bool))
    words = _pack(pairs.masks)
    keys, anded = [], []
    for kind, names, order, starts in _concept_runs(tuple(pairs.keys)):
        keys += [concept_key(kind, n) for n in names]
        anded.append(np.bitwise_and.reduceat(words if order is None else words[order], starts, axis=0))
    return MaskStack(keys, _unpack(np.concatenate(anded), pairs.width))


# ----------------------------------------------------------------------------- Jaccard metrics


def jaccard_matrix(masks: np.ndarray) -> np.ndarray:
    """Pairwise |A∩B| / |A∪B| of (N, W) boolean masks, float64; 0 where both are empty (so diag = 1 or 0)."""
    words = _pack(np.asarray(masks, dtype=bool)[:, None, :])[:, 0, :]            # (N, W/64) uint64
    # popcount of the pairwise ANDs: exact integer counts, and no BLAS threads to contend for
    inter = np.bitwise_count(words[:, None, :] & words[None, :, :]).sum(-1, dtype=np.int64).astype(np.float64)
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def universal_jaccard(universals: MaskStack, kind: str, layer: int = layout.JACCARD_LAYER) -> np.ndarray | None:
    """The `/metrics` matrix of one concept kind at `layer`, rows in sorted name order; None if unavailable."""
    rows = [i for i, k in enumerate(universals.keys) if k.startswith(f"{kind}__")]
    if not rows or layer >= universals.n_layers:
        return None
    return jaccard_matrix(universals.masks[rows, layer])


# ----------------------------------------------------------------------------- file stages


def _validate(acts: Activations, path: Path, key_kind: str) -> None:
    """Unit names and counts a well-formed stage-12 file must have."""
    for key in acts.keys:
        try:
            split_pair_key(key) if key_kind == "pair" else split_concept_key(key)
        except ValueError as exc:
            raise AtlasFileError(path, f"bad unit name: {exc}") from None
    counts = acts.firing_count
    bad = (counts < 0) | (counts > acts.n_prompts[:, None, None])
    if bad.any():
        u, l, ch = np.argwhere(bad)[0]
        raise AtlasFileError(path, f"firing count {counts[u, l, ch]} of {acts.keys[u]!r} (layer {l}, channel {ch}) "
                                   f"is outside [0, n_prompts={acts.n_prompts[u]}]")
    if (acts.activation_sum < 0).any():
        u, l, ch = np.argwhere(acts.activation_sum < 0)[0]
        raise AtlasFileError(path, f"negative activation sum (a sum of |act|) for {acts.keys[u]!r} "
                                   f"at layer {l}, channel {ch}")


def _up_to_date(output: Path, source: Path) -> bool:
    return output.is_file() and output.stat().st_mtime >= source.stat().st_mtime


def _load(data_dir: Path, name: str, key_kind: str) -> tuple[Path, Activations]:
    path = data_dir / name
    try:
        acts = read_activations(path)  # AtlasFileError (naming the file) if missing, malformed or non-finite
    except KeyError as exc:            # a group the reader expected is absent (e.g. one firing_counts layer)
        raise AtlasFileError(path, f"incomplete stage-12 file: {exc}") from None
    _validate(acts, path, key_kind)
    return path, acts


def _todo(outputs: dict[Setting, Path], source: Path, resume: bool) -> list[Setting]:
    if not source.is_file():
        raise AtlasFileError(source, "file not found (stage 13 needs this stage-12 activation file)")
    return [s for s, p in outputs.items() if not (resume and _up_to_date(p, source))]


def write_object_masks_sweep(acts: Activations, data_dir: os.PathLike | str,
                             settings: Iterable[Setting] = layout.SETTINGS) -> list[Path]:
    """Threshold, marginalise and write one `13_object_masks_eps{ε}_cons{C}.h5` per setting."""
    data_dir = Path(data_dir)
    settings = [(float(e), float(c)) for e, c in settings]
    split = [split_pair_key(k) for k in acts.keys]
    ast_nodes, builtin_objs = sorted({a for a, _ in split}), sorted({b for _, b in split})
    if acts.n_layers <= layout.JACCARD_LAYER:
        log.warning("%d layers only: no /metrics Jaccard matrices (they use layer %d)",
                    acts.n_layers, layout.JACCARD_LAYER)
    sweep = threshold_sweep(acts, settings)
    jobs = []
    for s in settings:
        pairs = sweep.pop(s)
        universals = marginalise(pairs)
        jobs.append((write_object_masks, data_dir / layout.object_masks_name(*s), ObjectMasks(
            epsilon=s[0], consistency=s[1], pairs=pairs, universals=universals,
            ast_nodes=ast_nodes, builtin_objs=builtin_objs,
            jaccard_ast=universal_jaccard(universals, "ast"),
            jaccard_builtin=universal_jaccard(universals, "builtin"))))
    return _write_all(jobs, "13 object masks")


def write_checker_masks_sweep(acts: Activations, data_dir: os.PathLike | str,
                              settings: Iterable[Setting] = layout.SETTINGS) -> list[Path]:
    """Threshold and write one `13_checker_masks_eps{ε}_cons{C}.h5` per setting (no marginalising)."""
    data_dir = Path(data_dir)
    settings = [(float(e), float(c)) for e, c in settings]
    sweep = threshold_sweep(acts, settings)
    jobs = [(write_checker_masks, data_dir / layout.checker_masks_name(*s), CheckerMasks(s[0], s[1], sweep.pop(s)))
            for s in settings]
    return _write_all(jobs, "13 checker masks")


def _write_all(jobs: list, desc: str) -> list[Path]:
    """Run `writer(path, content)` for each job, from parallel processes when the sweep is large."""
    n_datasets = sum(c.masks.masks.shape[0] * c.masks.n_layers if isinstance(c, CheckerMasks) else
                     (c.pairs.masks.shape[0] + c.universals.masks.shape[0]) * c.pairs.n_layers
                     for _, _, c in jobs)
    with tqdm(total=len(jobs), desc=desc, unit="file") as bar:
        if _WRITE_PROCESSES > 1 and n_datasets >= _PARALLEL_WRITE_MIN_DATASETS:
            # spawn, not fork: the parent may hold torch's thread pools.
            with ProcessPoolExecutor(_WRITE_PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
                for done in as_completed([pool.submit(writer, path, content) for writer, path, content in jobs]):
                    done.result()
                    bar.update()
        else:
            for writer, path, content in jobs:
                writer(path, content)
                bar.update()
    return [path for _, path, _ in jobs]


def build_object_masks(data_dir: os.PathLike | str, settings: Iterable[Setting] = layout.SETTINGS, *,
                       resume: bool = True) -> list[Path]:
    """`12_object_activations.h5` -> one `13_object_masks_eps{ε}_cons{C}.h5` per setting; returns their paths.

    With `resume`, a setting whose file exists and is newer than the activations is skipped,
    so an interrupted sweep continues where it stopped (files are written atomically).
    """
    data_dir = Path(data_dir)
    outputs = {(float(e), float(c)): data_dir / layout.object_masks_name(e, c) for e, c in settings}
    todo = _todo(outputs, data_dir / layout.OBJECT_ACTIVATIONS, resume)
    if todo:
        _, acts = _load(data_dir, layout.OBJECT_ACTIVATIONS, "pair")
        write_object_masks_sweep(acts, data_dir, todo)
    return list(outputs.values())


def build_checker_masks(data_dir: os.PathLike | str, settings: Iterable[Setting] = layout.SETTINGS, *,
                        resume: bool = True) -> list[Path]:
    """`12_checker_activations.h5` (11B) -> one `13_checker_masks_eps{ε}_cons{C}.h5` per setting."""
    data_dir = Path(data_dir)
    outputs = {(float(e), float(c)): data_dir / layout.checker_masks_name(e, c) for e, c in settings}
    todo = _todo(outputs, data_dir / layout.CHECKER_ACTIVATIONS, resume)
    if todo:
        _, acts = _load(data_dir, layout.CHECKER_ACTIVATIONS, "concept")
        write_checker_masks_sweep(acts, data_dir, todo)
    return list(outputs.values())


def build_token_checker_masks(data_dir: os.PathLike | str, *, resume: bool = True) -> Path:
    """5A: `12_token_checker_activations.h5` -> `token_checker_masks.h5` at ε = 0.001, C = 0.8 (§4).

    Metadata as released: `n_prompts_per_object` = 50 (the target, a constant) and the
    categories string; the real per-object prompt counts go to `/generation_stats`.
    """
    data_dir = Path(data_dir)
    eps, cons = layout.TOKEN_CHECKER_SETTING
    out = data_dir / layout.TOKEN_CHECKER_MASKS
    if not _todo({(eps, cons): out}, data_dir / layout.TOKEN_CHECKER_ACTIVATIONS, resume):
        return out
    _, acts = _load(data_dir, layout.TOKEN_CHECKER_ACTIVATIONS, "concept")
    write_checker_masks(out, CheckerMasks(
        eps, cons, threshold_masks(acts, eps, cons),
        extra_attrs={"n_prompts_per_object": TOKEN_CHECKER_N_TARGET, "categories": layout.CHECKER_CATEGORIES},
        generation_stats={k: int(n) for k, n in zip(acts.keys, acts.n_prompts)}))
    return out
