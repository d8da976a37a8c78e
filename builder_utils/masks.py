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

Everything is vectorised over units, layers and channels, and exact rewrites make the 9-setting
sweep cheap (each checked against the literal formula in tests/test_masks.py):

* x ↦ fl32(x / n) is monotone, so `fl32(sum / n) > ε` ⇔ `sum > t`, with t the largest float32
  for which fl32(t / n) <= ε. t is found once per distinct n, and the 21 M sums are compared
  without dividing them; likewise `fl32(count / n) >= C` ⇔ `count >= k`.
* A setting's mask is the AND of one ε test and one C test, so the sweep makes 3 + 3
  single-threshold masks and ANDs them into 9 settings; and as an AND over pairs distributes
  over that AND, the universals of all 9 settings come from marginalising the 6 (see `_Sweep`).

The sweep works through cache-sized blocks of units on all cores, and the masks stay
bit-packed (64 channels to a uint64 word, `MaskStack.words`) from the threshold on: ANDs
and Jaccard's popcounts handle 64 channels at a time, and booleans are unpacked only for a
consumer that asks for them (the HDF5 writer). `benchmarks/bench_masks.py` measures it.
"""

from __future__ import annotations

import collections
import functools
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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

_BLOCK_ELEMENTS = 1 << 19         # (unit, layer, channel) values per block of the sweep (cache-sized; tuned)
_THREADS = min(4, os.cpu_count() or 1)
# Processes writing a sweep's files when the caller asks for more than one (`writers`; see _write_all).
# Below _PARALLEL_WRITE_MIN_DATASETS (about a second of writing) a helper costs more than it saves.
DEFAULT_WRITERS = min(2, os.cpu_count() or 1)
_PARALLEL_WRITE_MIN_DATASETS = 20_000


# ----------------------------------------------------------------------------- thresholds


def _check_setting(epsilon: float, consistency: float) -> None:
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if not (0 <= consistency <= 1):
        raise ValueError(f"consistency must be in [0, 1], got {consistency!r}")


def mean_cutoffs(n_prompts: np.ndarray, epsilon: float) -> np.ndarray:
    """Per n: the largest float32 t with fl32(t / n) <= float32(ε), so `sum > t` ⇔ `fl32(sum / n) > ε`.

    t ↦ fl32(t / n) is monotone, so the set of t that pass is an interval [0, t*]: start at the
    float32 nearest ε·n and step one float32 at a time (a step or two; more only for ε = 0,
    where t / n underflows to 0 for the first ~n subnormals) to the edge.
    """
    distinct, where = np.unique(np.asarray(n_prompts), return_inverse=True)   # once per distinct n
    n = distinct.astype(np.float32)
    eps = np.float32(epsilon)

    def passes(x):
        return (x / n) <= eps

    with np.errstate(over="ignore"):             # ε·n and the step above the largest float32 may overflow
        t = (np.float64(eps) * n).astype(np.float32)
        while not passes(t).all():               # too high: step down (0.0 always passes, as ε >= 0)
            t = np.where(passes(t), t, np.nextafter(t, np.float32(0)))
        while True:                              # step up while the next float32 still passes
            up = np.nextafter(t, np.float32(np.inf))
            ok = passes(up) & (up < np.inf)
            if not ok.any():
                break
            t = np.where(ok, up, t)
    return t[where.reshape(np.shape(n_prompts))]


def count_cutoffs(n_prompts: np.ndarray, consistency: float) -> np.ndarray:
    """Per n: the smallest count k with fl32(k / n) >= float32(C), so `count >= k` ⇔ `fl32(count / n) >= C`."""
    n_prompts = np.asarray(n_prompts, dtype=np.int64)
    cons = np.float32(consistency)
    out = np.empty(n_prompts.shape, np.int64)
    for n in np.unique(n_prompts):                            # a handful of distinct counts, not one per unit
        rates = np.arange(n + 1, dtype=np.float32) / np.float32(n)
        out[n_prompts == n] = int(np.argmax(rates >= cons))   # rates[n] = 1 >= C, so argmax finds one
    return out


def _unique_settings(settings: Iterable[Setting]) -> list[Setting]:
    return list(dict.fromkeys((float(e), float(c)) for e, c in settings))


@dataclass(frozen=True)
class _Concepts:
    """How sorted pair keys `<ast>__<builtin>` group into concepts: each AST node's pairs form one
    contiguous run of rows, and a run holds at most one pair per builtin. The one implementation
    of marginalisation (`and_runs`), used whole by `marginalise` and block by block by the sweep."""

    ast_names: list[str]
    builtin_names: list[str]
    runs: list[tuple[int, int, int]]        # (first row, end row, AST index), in row order
    builtin_of: np.ndarray                  # each pair row's builtin index

    @property
    def keys(self) -> list[str]:
        return ([concept_key("ast", a) for a in self.ast_names]
                + [concept_key("builtin", b) for b in self.builtin_names])

    def builtin_accumulator(self, shape: tuple) -> np.ndarray:
        """All ones: the identity that `and_runs` ANDs a builtin's pairs into."""
        return np.full((len(self.builtin_names),) + shape, ~np.uint64(0))

    def and_runs(self, words: np.ndarray, first_row: int, runs: list[tuple[int, int, int]],
                 ast_out: np.ndarray, builtin_acc: np.ndarray) -> None:
        """AND `runs` (rows `first_row + i` of `words`) into their AST node's row of `ast_out`, which
        they fill (a run is the node's every pair), and into their builtins' rows of `builtin_acc`."""
        for start, stop, j in runs:
            run = words[start - first_row:stop - first_row]
            np.bitwise_and.reduce(run, axis=0, out=ast_out[j])
            builtin_acc[self.builtin_of[start:stop]] &= run      # distinct builtins within a run


@functools.lru_cache(maxsize=8)
def _concepts(pair_keys: tuple[str, ...]) -> _Concepts:
    """Cached: a sweep, and `marginalise` at every setting, see the same keys."""
    split = [split_pair_key(k) for k in pair_keys]
    ast_names, builtin_names = sorted({a for a, _ in split}), sorted({b for _, b in split})
    ast_index, builtin_index = {a: j for j, a in enumerate(ast_names)}, {b: j for j, b in enumerate(builtin_names)}
    runs: list[tuple[int, int, int]] = []
    for i, (a, _) in enumerate(split):
        if runs and runs[-1][2] == ast_index[a]:
            runs[-1] = (runs[-1][0], i + 1, runs[-1][2])
        else:
            runs.append((i, i + 1, ast_index[a]))
    if len(runs) != len(ast_names):
        raise ValueError("pair keys must be sorted (each AST node's pairs contiguous)")
    return _Concepts(ast_names, builtin_names, runs,
                     np.fromiter((builtin_index[b] for _, b in split), np.int64, count=len(split)))


@dataclass
class _Sweep:
    """Bit-packed masks of every unit at every setting and, for pairs, of every concept at every
    single threshold: `universal_passes[:, i]` is the AND over a concept's pairs of `sum / n > ε_i`,
    `universal_passes[:, n_ε + j]` that of `count / n >= C_j` (an AND over pairs distributes over
    the AND of the two tests, so setting (ε_i, C_j)'s universal mask is the AND of those two)."""

    epsilons: list[float]
    consistencies: list[float]
    pairs: np.ndarray                                # (len(settings), U, L, words)
    concept_keys: list[str] = field(default_factory=list)
    universal_passes: np.ndarray | None = None       # (len(concept_keys), n_ε + n_C, L, words)

    def universal_words(self, epsilon: float, consistency: float) -> np.ndarray:
        n_e = len(self.epsilons)
        return (self.universal_passes[:, self.epsilons.index(epsilon)]
                & self.universal_passes[:, n_e + self.consistencies.index(consistency)])


def _sweep(acts: Activations, settings: list[Setting], universals: bool = False) -> _Sweep:
    """Threshold every unit at every distinct ε and C, AND them into every setting and, with
    `universals` (units are pairs), AND each concept's pairs together as well.

    Works through blocks of units small enough to stay in cache, on all cores (numpy releases
    the GIL in its loops). Per block, one broadcast comparison tests every ε (and one every C),
    one `packbits` packs them to 64 channels a word, and each setting is an AND of packed words:
    few, long numpy calls, which is what lets the threads overlap. Blocks hold whole AST runs (a
    node's pairs are contiguous in sorted key order), so a node is reduced inside one block; a
    run has one pair per builtin, so it ANDs into distinct rows of a per-thread builtin accumulator.
    """
    for e, c in settings:
        _check_setting(e, c)
    n = np.asarray(acts.n_prompts, dtype=np.int64)
    if (n <= 0).any():
        raise ValueError(f"unit {acts.keys[int(np.argmin(n))]!r} has n_prompts <= 0")
    sums = np.asarray(acts.activation_sum, dtype=np.float32)       # the release stores float32 sums
    counts = np.asarray(acts.firing_count)
    n_units, n_layers, width = sums.shape
    epsilons = list(dict.fromkeys(e for e, _ in settings))
    consistencies = list(dict.fromkeys(c for _, c in settings))
    n_e, n_thresholds, words = len(epsilons), len(epsilons) + len(consistencies), layout.n_words(width)
    # Cutoffs as (unit, threshold, 1, 1), against values broadcast as (unit, 1, layer, channel).
    mean_cut = np.stack([mean_cutoffs(n, e) for e in epsilons], axis=-1)[:, :, None, None]
    count_cut = np.stack([count_cutoffs(n, c) for c in consistencies], axis=-1).astype(counts.dtype)[:, :, None, None]
    if len(n) and (n == n[0]).all():     # one prompt count (the usual case): the same cutoffs for every block
        mean_cut, count_cut = mean_cut[:1], count_cut[:1]
    # Per ε, one broadcast AND makes all its settings (consecutive in the ε-major grid; else one by one).
    and_groups = []
    for i, e in enumerate(epsilons):
        ks = [k for k, s in enumerate(settings) if s[0] == e]
        js = [n_e + consistencies.index(settings[k][1]) for k in ks]
        if ks == list(range(ks[0], ks[-1] + 1)):
            and_groups.append((i, slice(ks[0], ks[-1] + 1), js))
        else:
            and_groups += [(i, slice(k, k + 1), [j]) for k, j in zip(ks, js)]
    sweep = _Sweep(epsilons, consistencies, np.empty((len(settings), n_units, n_layers, words), np.uint64))

    if universals:
        concepts = _concepts(tuple(acts.keys))
        runs = concepts.runs
        ast_passes = np.empty((len(concepts.ast_names), n_thresholds, n_layers, words), np.uint64)
        builtin_accumulators: list[np.ndarray] = []              # one per thread, ANDed together at the end
    else:
        runs = [(u, u + 1, -1) for u in range(n_units)]
    units_per_block = max(1, _BLOCK_ELEMENTS // max(1, n_layers * width))
    blocks: list[list[tuple]] = []                               # whole runs, up to units_per_block (or one run)
    for run in runs:
        if blocks and run[1] - blocks[-1][0][0] <= units_per_block:
            blocks[-1].append(run)
        else:
            blocks.append([run])
    most_units = max((b[-1][1] - b[0][0] for b in blocks), default=0)
    scratch = threading.local()                                  # per-thread buffers

    def one_block(block_runs: list[tuple]) -> None:
        lo, hi = block_runs[0][0], block_runs[-1][1]
        if not hasattr(scratch, "tests"):
            scratch.tests = np.empty((most_units, n_thresholds, n_layers, width), bool)
        tests = scratch.tests[:hi - lo]
        np.greater(sums[lo:hi, None], mean_cut if len(mean_cut) == 1 else mean_cut[lo:hi], out=tests[:, :n_e])
        np.greater_equal(counts[lo:hi, None], count_cut if len(count_cut) == 1 else count_cut[lo:hi],
                         out=tests[:, n_e:])
        passed = layout.pack_bits(tests)                     # (units, thresholds, L, words)
        for i, ks, js in and_groups:
            np.bitwise_and(passed[:, i], passed[:, js].transpose(1, 0, 2, 3), out=sweep.pairs[ks, lo:hi])
        if not universals:
            return
        if not hasattr(scratch, "builtins"):
            scratch.builtins = concepts.builtin_accumulator(passed.shape[1:])
            builtin_accumulators.append(scratch.builtins)
        concepts.and_runs(passed, lo, block_runs, ast_passes, scratch.builtins)

    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(one_block, blocks))
    if universals:
        sweep.concept_keys = concepts.keys
        sweep.universal_passes = np.concatenate(
            [ast_passes, np.bitwise_and.reduce(builtin_accumulators, axis=0) if builtin_accumulators
             else concepts.builtin_accumulator(ast_passes.shape[1:])])
    return sweep


def threshold_sweep(acts: Activations, settings: Iterable[Setting] = layout.SETTINGS) -> dict[Setting, MaskStack]:
    """Masks of every unit at every (ε, C) setting, bit-packed (`MaskStack.words`)."""
    settings = _unique_settings(settings)
    sweep = _sweep(acts, settings)
    return {s: MaskStack(list(acts.keys), words=sweep.pairs[k], width=acts.width) for k, s in enumerate(settings)}


def threshold_masks(acts: Activations, epsilon: float, consistency: float) -> MaskStack:
    """`(activation_sum / n > ε) & (firing_count / n >= C)` in float32 (§6), for every unit and layer."""
    return threshold_sweep(acts, [(epsilon, consistency)])[(float(epsilon), float(consistency))]


# ----------------------------------------------------------------------------- marginalisation


def marginalise(pairs: MaskStack) -> MaskStack:
    """Universal masks `ast__X` (AND over X's present pairs) and `builtin__Y` (AND over Y's present pairs)."""
    concepts, words = _concepts(tuple(pairs.keys)), pairs.words
    ast = np.empty((len(concepts.ast_names),) + words.shape[1:], np.uint64)
    builtins = concepts.builtin_accumulator(words.shape[1:])
    concepts.and_runs(words, 0, concepts.runs, ast, builtins)
    return MaskStack(concepts.keys, words=np.concatenate([ast, builtins]), width=pairs.width)


# ----------------------------------------------------------------------------- Jaccard metrics


def jaccard_matrix(masks: np.ndarray) -> np.ndarray:
    """Pairwise |A∩B| / |A∪B| of (N, W) boolean masks, float64; 0 where both are empty (so diag = 1 or 0)."""
    return _jaccard_words(layout.pack_bits(masks))


@functools.lru_cache(maxsize=8)
def _upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n)


def _jaccard_words(words: np.ndarray) -> np.ndarray:
    """`jaccard_matrix` of (..., N, W/64) packed masks: one (N, N) matrix per leading index."""
    # Exact integer counts: popcount of the AND of every pair i <= j (the matrix is symmetric), laid
    # out word-major so each numpy loop runs over all the pairs (of a whole batch) at once.
    *batch, n, _ = words.shape
    i, j = _upper_triangle(n)
    by_word = np.ascontiguousarray(np.swapaxes(words, -1, -2))
    counts = np.bitwise_count(np.take(by_word, i, axis=-1) & np.take(by_word, j, axis=-1)).sum(-2, dtype=np.uint32)
    inter = np.empty((*batch, n, n), np.float64)
    inter[..., i, j] = counts
    inter[..., j, i] = counts
    sizes = np.diagonal(inter, axis1=-2, axis2=-1)
    union = sizes[..., :, None] + sizes[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _kind_rows(keys: list[str], kind: str) -> list[int]:
    return [i for i, k in enumerate(keys) if k.startswith(f"{kind}__")]


def universal_jaccard(universals: MaskStack, kind: str, layer: int = layout.JACCARD_LAYER) -> np.ndarray | None:
    """The `/metrics` matrix of one concept kind at `layer`, rows in sorted name order; None if unavailable."""
    rows = _kind_rows(universals.keys, kind)
    if not rows or layer >= universals.n_layers:
        return None
    return _jaccard_words(universals.words[rows, layer])


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


def load_activations(path: os.PathLike | str, key_kind: str) -> Activations:
    """Read and check a stage-12 file for this stage (`key_kind` "pair" or "concept": how units are named).

    Once the counts are known to lie in [0, n_prompts], they are held in the narrowest unsigned
    type that fits (uint8 for the release's 50 prompts): a quarter of the memory, and the sweep
    streams and compares them that much faster. The values are unchanged.
    """
    path = Path(path)
    try:
        acts = read_activations(path)  # AtlasFileError (naming the file) if missing, malformed or non-finite
    except KeyError as exc:            # a group the reader expected is absent (e.g. one firing_counts layer)
        raise AtlasFileError(path, f"incomplete stage-12 file: {exc}") from None
    _validate(acts, path, key_kind)
    narrow = np.min_scalar_type(int(acts.n_prompts.max(initial=0)))
    if narrow.itemsize < acts.firing_count.dtype.itemsize:
        acts.firing_count = acts.firing_count.astype(narrow)
    return acts


def _todo(outputs: dict[Setting, Path], source: Path, resume: bool) -> list[Setting]:
    if not source.is_file():
        raise AtlasFileError(source, "file not found (stage 13 needs this stage-12 activation file)")
    return [s for s, p in outputs.items() if not (resume and _up_to_date(p, source))]


def sweep_object_masks(acts: Activations, settings: Iterable[Setting] = layout.SETTINGS) -> dict[Setting, ObjectMasks]:
    """The content of every `13_object_masks_eps{ε}_cons{C}.h5`: pair masks, universal masks and
    the layer-4 Jaccard matrices at each setting (masks bit-packed).

    The universal masks come out of the sweep itself (see `_Sweep`): the same masks as
    `marginalise` of each setting's pair masks, from six reductions instead of nine, done while
    each block is still in cache.
    """
    settings = _unique_settings(settings)
    if acts.n_layers <= layout.JACCARD_LAYER:
        log.warning("%d layers only: no /metrics Jaccard matrices (they use layer %d)",
                    acts.n_layers, layout.JACCARD_LAYER)
    if list(acts.keys) != sorted(acts.keys):       # the sweep wants each AST node's pairs contiguous
        order = np.argsort(np.array(acts.keys, dtype=object), kind="stable")
        acts = replace(acts, keys=[acts.keys[i] for i in order], activation_sum=acts.activation_sum[order],
                                   firing_count=acts.firing_count[order], n_prompts=acts.n_prompts[order])
    sweep = _sweep(acts, settings, universals=True)
    concepts = _concepts(tuple(acts.keys))
    universals = [MaskStack(sweep.concept_keys, words=sweep.universal_words(e, c), width=acts.width)
                  for e, c in settings]
    jaccard = {}                        # per kind, every setting's matrix (`universal_jaccard`) in one batch
    for kind in ("ast", "builtin"):
        rows = _kind_rows(sweep.concept_keys, kind)
        jaccard[kind] = (_jaccard_words(np.stack([u.words[rows, layout.JACCARD_LAYER] for u in universals]))
                         if rows and acts.n_layers > layout.JACCARD_LAYER else [None] * len(settings))
    return {(e, c): ObjectMasks(epsilon=e, consistency=c,
                                pairs=MaskStack(acts.keys, words=sweep.pairs[k], width=acts.width),
                                universals=universals[k], ast_nodes=concepts.ast_names,
                                builtin_objs=concepts.builtin_names,
                                jaccard_ast=jaccard["ast"][k], jaccard_builtin=jaccard["builtin"][k])
            for k, (e, c) in enumerate(settings)}


def sweep_checker_masks(acts: Activations,
                        settings: Iterable[Setting] = layout.SETTINGS) -> dict[Setting, CheckerMasks]:
    """The content of every `13_checker_masks_eps{ε}_cons{C}.h5` (thresholds only: no marginalising)."""
    return {s: CheckerMasks(s[0], s[1], stack) for s, stack in threshold_sweep(acts, settings).items()}


def write_object_masks_sweep(acts: Activations, data_dir: os.PathLike | str,
                             settings: Iterable[Setting] = layout.SETTINGS, *, writers: int = 1) -> list[Path]:
    """Threshold, marginalise and write one `13_object_masks_eps{ε}_cons{C}.h5` per setting
    (`writers` processes: see `_write_all`)."""
    contents = sweep_object_masks(acts, settings)
    return _write_all([(write_object_masks, Path(data_dir) / layout.object_masks_name(*s), om)
                       for s, om in contents.items()], "13 object masks",
                      n_datasets=sum((len(om.pairs.keys) + len(om.universals.keys)) * acts.n_layers
                                     for om in contents.values()), writers=writers)


def write_checker_masks_sweep(acts: Activations, data_dir: os.PathLike | str,
                              settings: Iterable[Setting] = layout.SETTINGS, *, writers: int = 1) -> list[Path]:
    """Threshold and write one `13_checker_masks_eps{ε}_cons{C}.h5` per setting."""
    contents = sweep_checker_masks(acts, settings)
    return _write_all([(write_checker_masks, Path(data_dir) / layout.checker_masks_name(*s), cm)
                       for s, cm in contents.items()], "13 checker masks",
                      n_datasets=len(contents) * len(acts.keys) * acts.n_layers, writers=writers)


def _write_all(jobs: list, desc: str, n_datasets: int, writers: int = 1) -> list[Path]:
    """Run `writer(path, content)` for each job; with `writers` > 1, a large sweep also hands jobs
    to `writers - 1` helper processes.

    Writing is bound by HDF5's per-dataset cost, on one core per process (h5py holds the GIL), so
    helpers add cores. They are spawned, not forked (the parent may hold torch's thread pools),
    which takes a moment, so the parent writes too and every writer takes the next job when free.
    A spawned process re-imports the caller's `__main__` script, so only an entry point with an
    `if __name__ == "__main__":` guard should ask for helpers (the stage scripts do); the default,
    one writer, never starts a process.
    """
    helpers = max(0, writers - 1) if n_datasets >= _PARALLEL_WRITE_MIN_DATASETS else 0
    pending = collections.deque(jobs)                  # popleft is atomic: the writers share it safely

    with tqdm(total=len(jobs), desc=desc, unit="file") as bar:
        def write_pending(write) -> None:
            while True:
                try:
                    writer, path, content = pending.popleft()
                except IndexError:
                    return
                write(writer, path, content)
                bar.update()

        def here(writer, path, content) -> None:
            writer(path, content)

        if helpers:
            with ProcessPoolExecutor(helpers, mp_context=multiprocessing.get_context("spawn")) as pool, \
                    ThreadPoolExecutor(helpers) as feeders:   # one thread per helper, waiting on its current job
                fed = [feeders.submit(write_pending, lambda *job: pool.submit(*job).result()) for _ in range(helpers)]
                write_pending(here)
                for done in fed:
                    done.result()
        else:
            write_pending(here)
    return [path for _, path, _ in jobs]


def build_object_masks(data_dir: os.PathLike | str, settings: Iterable[Setting] = layout.SETTINGS, *,
                       resume: bool = True, writers: int = 1) -> list[Path]:
    """`12_object_activations.h5` -> one `13_object_masks_eps{ε}_cons{C}.h5` per setting; returns their paths.

    With `resume`, a setting whose file exists and is newer than the activations is skipped,
    so an interrupted sweep continues where it stopped (files are written atomically).
    `writers` > 1 writes from helper processes as well; see `_write_all` for when that is safe.
    """
    return _build_sweep(data_dir, settings, resume, writers, layout.OBJECT_ACTIVATIONS, "pair",
                        layout.object_masks_name, write_object_masks_sweep)


def build_checker_masks(data_dir: os.PathLike | str, settings: Iterable[Setting] = layout.SETTINGS, *,
                        resume: bool = True, writers: int = 1) -> list[Path]:
    """`12_checker_activations.h5` (11B) -> one `13_checker_masks_eps{ε}_cons{C}.h5` per setting."""
    return _build_sweep(data_dir, settings, resume, writers, layout.CHECKER_ACTIVATIONS, "concept",
                        layout.checker_masks_name, write_checker_masks_sweep)


def _build_sweep(data_dir, settings, resume: bool, writers: int, source: str, key_kind: str, output_name,
                 write_sweep) -> list[Path]:
    data_dir = Path(data_dir)
    outputs = {(float(e), float(c)): data_dir / output_name(e, c) for e, c in settings}
    todo = _todo(outputs, data_dir / source, resume)
    if todo:
        write_sweep(load_activations(data_dir / source, key_kind), data_dir, todo, writers=writers)
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
    acts = load_activations(data_dir / layout.TOKEN_CHECKER_ACTIVATIONS, "concept")
    write_checker_masks(out, CheckerMasks(
        eps, cons, threshold_masks(acts, eps, cons),
        extra_attrs={"n_prompts_per_object": TOKEN_CHECKER_N_TARGET, "categories": layout.CHECKER_CATEGORIES},
        generation_stats={k: int(n) for k, n in zip(acts.keys, acts.n_prompts)}))
    return out
