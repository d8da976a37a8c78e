"""The release file layout: names, the (ε, C) grid, HDF5 groups, tables.

This module is the single source of truth for what the CSP-Atlas release looks like
on disk (ALGORITHMS.md §1.5, §3–§10; DATASET_CARD.md). Every stage writes through
the writers here and every consumer reads through the readers, so the paper's own
loaders (which walk `/universal_masks/layer_L/{concept}` etc.) read our files.

Arrays are held stacked — `(units, layers, width)` — because every stage is
vectorised over units and layers. The mask width is read from the data, never assumed.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd

# ----------------------------------------------------------------------------- constants

N_LAYERS = 8
EPSILONS: tuple[float, ...] = (0.001, 0.1, 0.5)
CONSISTENCIES: tuple[float, ...] = (0.2, 0.5, 0.8)
# ε-major, as every release table orders them.
SETTINGS: tuple[tuple[float, float], ...] = tuple((e, c) for e in EPSILONS for c in CONSISTENCIES)
REFERENCE_SETTING = (0.5, 0.8)          # the paper's reference cell (modularity, Figure 1)
TOKEN_CHECKER_SETTING = (0.001, 0.8)    # the 5A token-checker masks and 5B comparison
JACCARD_LAYER = 4                       # `/metrics` matrices are computed at this layer only

OBJECT_PROMPTS = "11A_object_prompts.parquet"
OBJECT_PROMPT_STATS = "11A_object_stats.json"
CHECKER_PROMPTS = "11B_checker_prompts.parquet"
CHECKER_PROMPT_STATS = "11B_checker_stats.json"
TOKEN_CHECKER_PROMPTS = "token_checker_prompts.parquet"
TOKEN_CHECKER_PROMPT_STATS = "token_checker_stats.json"
OBJECT_ACTIVATIONS = "12_object_activations.h5"
CHECKER_ACTIVATIONS = "12_checker_activations.h5"
# Not a release file: the 5A activations, kept so token_checker_masks.h5 can be re-derived and validated.
TOKEN_CHECKER_ACTIVATIONS = "12_token_checker_activations.h5"
TOKEN_CHECKER_MASKS = "token_checker_masks.h5"
SUMMARY = "14_summary.csv"
MODULARITY_SCORES = "relaxed_modularity_scores.csv"
MODULARITY_DETAIL = "relaxed_modularity_detail.csv"
TOKEN_INDEPENDENCE_SUMMARY = "token_independence_summary.csv"
TOKEN_INDEPENDENCE_DETAIL = "token_independence_detail.csv"
TOKEN_INDEPENDENCE_NO_KEYWORD = "token_independence_no_keyword.csv"
MANIFEST = "atlas_manifest.json"
STAMPS_DIR = ".stamps"                  # per-stage parameters and input hashes (pipeline, manifest)

# HDF5 group names (release spelling; the checker files reuse `token_checker_masks`).
G_ACTIVATIONS, G_FIRING, G_NPROMPTS, G_METADATA = "activations", "firing_counts", "n_prompts", "metadata"
G_PAIR, G_UNIVERSAL, G_METRICS, G_CHECKER, G_GEN_STATS = (
    "pair_masks", "universal_masks", "metrics", "token_checker_masks", "generation_stats")

CHECKER_CATEGORIES = "A_string,B_comment,C_identifier,D_dictkey,E_print"


def setting_tag(epsilon: float, consistency: float) -> str:
    """`eps0.001_cons0.2` — Python float repr, exactly as the release file names use it."""
    return f"eps{float(epsilon)!r}_cons{float(consistency)!r}"


_TAG_RE = re.compile(r"^eps(?P<e>[0-9.]+)_cons(?P<c>[0-9.]+)$")


def parse_setting_tag(tag: str) -> tuple[float, float]:
    m = _TAG_RE.match(tag)
    if not m:
        raise ValueError(f"not a setting tag (expected 'eps<ε>_cons<C>'): {tag!r}")
    return float(m["e"]), float(m["c"])


def object_masks_name(epsilon: float, consistency: float) -> str:
    return f"13_object_masks_{setting_tag(epsilon, consistency)}.h5"


def checker_masks_name(epsilon: float, consistency: float) -> str:
    return f"13_checker_masks_{setting_tag(epsilon, consistency)}.h5"


def target_checker_name(epsilon: float, consistency: float) -> str:
    return f"14_target_checker_{setting_tag(epsilon, consistency)}.csv"


def release_file_names(include_activations: bool = True) -> list[str]:
    """Every file of a complete release, in pipeline order."""
    names = [OBJECT_PROMPTS, CHECKER_PROMPTS, TOKEN_CHECKER_PROMPTS]
    if include_activations:
        names += [OBJECT_ACTIVATIONS, CHECKER_ACTIVATIONS]
    names += [object_masks_name(e, c) for e, c in SETTINGS]
    names += [checker_masks_name(e, c) for e, c in SETTINGS]
    names += [TOKEN_CHECKER_MASKS, SUMMARY]
    names += [target_checker_name(e, c) for e, c in SETTINGS]
    names += [MODULARITY_SCORES, MODULARITY_DETAIL, TOKEN_INDEPENDENCE_SUMMARY, TOKEN_INDEPENDENCE_DETAIL,
              TOKEN_INDEPENDENCE_NO_KEYWORD]
    return names


# ----------------------------------------------------------------------------- errors, atomic writes


class AtlasFileError(ValueError):
    """A release file is missing, unreadable or does not have the release layout."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    An interrupted writer therefore never leaves a file under a final release name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: os.PathLike | str) -> list[Path]:
    """Delete the temporaries `atomic_output` leaves when its process is killed mid-write."""
    stale = sorted(Path(folder).glob(".*.tmp-*"))
    for tmp in stale:
        if tmp.is_file():
            tmp.unlink()
    return stale


def _require(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AtlasFileError(path, "file not found")
    return path


@contextlib.contextmanager
def open_h5(path: os.PathLike | str) -> Iterator[h5py.File]:
    """Open a release HDF5 file for reading; a missing or unreadable one raises AtlasFileError naming it."""
    path = _require(Path(path))
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise AtlasFileError(path, f"not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    with f:
        yield f


def _new_h5(path: Path) -> h5py.File:
    # No timestamps in object headers: two builds of the same content give the same bytes.
    return h5py.File(path, "w", track_order=False)


_GZIP_LEVEL = 4   # what h5py's compression="gzip" means


def _write_vectors(group: h5py.Group, names: list[str], rows: np.ndarray) -> None:
    """One gzip'd vector dataset `group/names[i]` per row, byte-identical to what
    `group.create_dataset(name, data=row, compression="gzip")` writes.

    An atlas holds ~100k of these, so the per-dataset overhead is what costs. The property lists
    are built once per (dtype, width) with h5py's own helper; each vector is one chunk, so we
    deflate it with zlib at h5py's level and hand it to HDF5 with `write_direct_chunk`, skipping
    the filter pipeline (HDF5's deflate filter makes the same zlib stream). Identical rows (empty
    masks, above all) are deflated once.
    """
    rows = np.asarray(rows)
    tid, space, dcpl, one_chunk = _vector_plists(rows.dtype.str, rows.shape[1:])
    deflated: dict[bytes, bytes] = {}
    for name, row in zip(names, rows):
        dset = h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl)
        if one_chunk:
            raw = row.tobytes()
            chunk = deflated.get(raw)
            if chunk is None:
                chunk = deflated[raw] = zlib.compress(raw, _GZIP_LEVEL)
            dset.write_direct_chunk((0,), chunk)
        else:                                # a very long vector: let HDF5 chunk and filter it
            dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(row))
        del dset                             # closed before the next one, as create_dataset's would be


_VECTOR_PLISTS: dict = {}


def _vector_plists(dtype: str, shape: tuple):
    """(type, dataspace, creation property list, whether the vector is a single chunk) for a gzip'd vector."""
    if (dtype, shape) not in _VECTOR_PLISTS:
        from h5py._hl import filters  # h5py is pinned; this is the helper create_dataset itself uses
        dcpl = filters.fill_dcpl(h5py.h5p.create(h5py.h5p.DATASET_CREATE), shape, np.dtype(dtype), None, "gzip",
                                 None, None, None, None, None, None, False)
        dcpl.set_obj_track_times(False)
        _VECTOR_PLISTS[(dtype, shape)] = (h5py.h5t.py_create(np.dtype(dtype), logical=1),
                                          h5py.h5s.create_simple(shape), dcpl, dcpl.get_chunk() == shape)
    return _VECTOR_PLISTS[(dtype, shape)]


# ----------------------------------------------------------------------------- stacked arrays


def pack_bits(masks: np.ndarray) -> np.ndarray:
    """`(..., W)` bool -> `(..., ceil(W / 64))` uint64 words, channel c at bit c % 64 of word c // 64
    (zero-padded): an AND or a popcount handles 64 channels at once, in 8x less memory."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[-1] % 64 == 0 and masks.flags.c_contiguous:   # the release width: no padding, one flat call
        return np.packbits(masks.reshape(-1), bitorder="little").view(np.uint64).reshape(
            masks.shape[:-1] + (masks.shape[-1] // 64,))
    packed = np.packbits(masks, axis=-1, bitorder="little")
    pad = -packed.shape[-1] % 8
    if pad:
        packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view(np.uint64)


def unpack_bits(words: np.ndarray, width: int) -> np.ndarray:
    """Inverse of `pack_bits` (the padding bits are dropped)."""
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, count=width,
                         bitorder="little").view(bool)


def n_words(width: int) -> int:
    return -(-width // 64)


class MaskStack:
    """Named boolean masks, stacked `(len(keys), n_layers, width)`; keys sorted.

    Built from booleans (`MaskStack(keys, masks)`) or from bit-packed words
    (`MaskStack(keys, words=..., width=W)`, the form stage 13 computes in). The form it was built
    from is the one it holds; the other is derived on use. Booleans unpacked from words are cached
    and read-only, so the two forms cannot drift apart.
    """

    def __init__(self, keys: list[str], masks: np.ndarray | None = None, *,
                 words: np.ndarray | None = None, width: int | None = None):
        if (masks is None) == (words is None):
            raise ValueError("MaskStack takes either boolean masks or packed words (with width)")
        keys = list(keys)
        if masks is not None:
            data = np.asarray(masks)
            if data.ndim != 3 or data.shape[0] != len(keys):
                raise ValueError(f"masks shape {data.shape} does not match {len(keys)} keys")
            width = data.shape[2]
        else:
            data = np.asarray(words)
            if width is None or data.dtype != np.uint64 or data.ndim != 3 or data.shape[0] != len(keys) \
                    or data.shape[2] != n_words(width):
                raise ValueError(f"packed words {data.dtype}{data.shape} do not hold {len(keys)} keys "
                                 f"x width {width}")
        if keys != sorted(keys):
            order = np.argsort(np.array(keys, dtype=object), kind="stable")
            keys, data = [keys[i] for i in order], data[order]
        self.keys, self.width = keys, int(width)
        self._masks, self._words = (data, None) if masks is not None else (None, data)

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._masks = unpack_bits(self._words, self.width)
            self._masks.flags.writeable = False
        return self._masks

    @property
    def words(self) -> np.ndarray:
        return self._words if self._words is not None else pack_bits(self._masks)

    @property
    def n_layers(self) -> int:
        return (self._words if self._words is not None else self._masks).shape[1]

    def __getstate__(self) -> dict:
        # Pickle (e.g. to a writer process) only the form it holds: packed words are 8x smaller.
        state = dict(self.__dict__)
        if self._words is not None:
            state["_masks"] = None
        return state

    def __repr__(self) -> str:
        form = "packed" if self._words is not None else "bool"
        return f"MaskStack({len(self.keys)} keys x {self.n_layers} layers x {self.width}, {form})"

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def as_sets(self) -> dict[str, dict[int, set[int]]]:
        return {k: {l: set(np.flatnonzero(self.masks[i, l]).tolist()) for l in range(self.n_layers)}
                for i, k in enumerate(self.keys)}

    def as_arrays(self) -> dict[str, dict[int, np.ndarray]]:
        return {k: {l: self.masks[i, l] for l in range(self.n_layers)} for i, k in enumerate(self.keys)}


@dataclass
class Activations:
    """One `12_*_activations.h5` file: Σ|act| and the count of act ≠ 0 per unit, layer and channel."""

    keys: list[str]
    activation_sum: np.ndarray      # (U, L, W) float32
    firing_count: np.ndarray        # (U, L, W) int32
    n_prompts: np.ndarray           # (U,) int64
    attrs: dict = field(default_factory=dict)   # model_id, input_file, ... (n_layers/n_pairs are derived)
    ast_nodes: list[str] | None = None          # object file only
    builtin_objs: list[str] | None = None

    @property
    def width(self) -> int:
        return self.activation_sum.shape[2]

    @property
    def n_layers(self) -> int:
        return self.activation_sum.shape[1]


@dataclass
class ObjectMasks:
    """One `13_object_masks_eps{ε}_cons{C}.h5` file."""

    epsilon: float
    consistency: float
    pairs: MaskStack
    universals: MaskStack
    ast_nodes: list[str]
    builtin_objs: list[str]
    jaccard_ast: np.ndarray | None = None       # (43, 43) float64 at JACCARD_LAYER
    jaccard_builtin: np.ndarray | None = None


@dataclass
class CheckerMasks:
    """One `13_checker_masks_*.h5` file, or `token_checker_masks.h5` (which has generation_stats)."""

    epsilon: float
    consistency: float
    masks: MaskStack
    extra_attrs: dict = field(default_factory=dict)
    generation_stats: dict[str, int] | None = None


# ----------------------------------------------------------------------------- HDF5: activations


def write_activations(path: os.PathLike | str, acts: Activations) -> None:
    """Write the release layout (ALGORITHMS.md §5.3), atomically."""
    _check_finite(acts, path)
    with atomic_output(path) as tmp, _new_h5(tmp) as f:
        ga, gf, gn = f.create_group(G_ACTIVATIONS), f.create_group(G_FIRING), f.create_group(G_NPROMPTS)
        for l in range(acts.n_layers):
            la, lf = ga.create_group(f"layer_{l}"), gf.create_group(f"layer_{l}")
            _write_vectors(la, acts.keys, acts.activation_sum[:, l].astype(np.float32))
            _write_vectors(lf, acts.keys, acts.firing_count[:, l].astype(np.int32))
        for i, key in enumerate(acts.keys):
            gn.create_dataset(key, data=np.int64(acts.n_prompts[i]), track_times=False)  # scalar, as released
        md = f.create_group(G_METADATA)
        md.attrs["model_id"] = str(acts.attrs.get("model_id", ""))
        md.attrs["n_layers"] = int(acts.n_layers)
        md.attrs["n_pairs"] = int(len(acts.keys))
        md.attrs["input_file"] = str(acts.attrs.get("input_file", ""))
        for k, v in acts.attrs.items():
            if k not in ("model_id", "input_file", "n_layers", "n_pairs"):
                md.attrs[k] = v
        if acts.ast_nodes is not None:
            md.create_dataset("ast_nodes", data=np.array(acts.ast_nodes, dtype=h5py.string_dtype()))
            md.create_dataset("builtin_objs", data=np.array(acts.builtin_objs, dtype=h5py.string_dtype()))


def _check_finite(acts: Activations, path) -> None:
    bad = ~np.isfinite(acts.activation_sum)
    if bad.any():
        u, l, _ = np.argwhere(bad)[0]
        raise AtlasFileError(path, f"non-finite activation sum for unit {acts.keys[u]!r} at layer {l}")


def read_activations(path: os.PathLike | str) -> Activations:
    with open_h5(path) as f:
        for g in (G_ACTIVATIONS, G_FIRING, G_NPROMPTS, G_METADATA):
            if g not in f:
                raise AtlasFileError(path, f"missing group /{g}")
        n_layers = _layer_count(f[G_ACTIVATIONS], path)
        if _layer_count(f[G_FIRING], path) != n_layers:
            raise AtlasFileError(path, f"/{G_FIRING} has {_layer_count(f[G_FIRING], path)} layer groups, "
                                       f"/{G_ACTIVATIONS} has {n_layers}")
        keys = sorted(f[G_NPROMPTS].keys())
        act = _read_stack(f[G_ACTIVATIONS], keys, n_layers, np.float32, path)
        fire = _read_stack(f[G_FIRING], keys, n_layers, np.int32, path)
        n_prompts = np.array([int(f[G_NPROMPTS][k][()]) for k in keys], dtype=np.int64)
        md = f[G_METADATA]
        attrs = {k: _plain(v) for k, v in md.attrs.items()}
        ast_nodes = _read_strings(md["ast_nodes"]) if "ast_nodes" in md else None
        builtin_objs = _read_strings(md["builtin_objs"]) if "builtin_objs" in md else None
    acts = Activations(keys, act, fire, n_prompts, attrs, ast_nodes, builtin_objs)
    if (n_prompts <= 0).any():
        raise AtlasFileError(path, f"unit {keys[int(np.argmin(n_prompts))]!r} has n_prompts <= 0")
    _check_finite(acts, path)
    return acts


# ----------------------------------------------------------------------------- HDF5: masks


def write_object_masks(path: os.PathLike | str, om: ObjectMasks) -> None:
    """Write `13_object_masks_*.h5` (ALGORITHMS.md §6), atomically."""
    with atomic_output(path) as tmp, _new_h5(tmp) as f:
        _write_mask_group(f.create_group(G_PAIR), om.pairs)
        _write_mask_group(f.create_group(G_UNIVERSAL), om.universals)
        mg = f.create_group(G_METRICS)
        if om.jaccard_ast is not None:
            mg.create_dataset("jaccard_ast_matrix", data=np.asarray(om.jaccard_ast, np.float64), track_times=False)
        if om.jaccard_builtin is not None:
            mg.create_dataset("jaccard_builtin_matrix", data=np.asarray(om.jaccard_builtin, np.float64),
                              track_times=False)
        md = f.create_group(G_METADATA)
        md.attrs["epsilon"] = float(om.epsilon)
        md.attrs["consistency_thresh"] = float(om.consistency)
        md.attrs["n_pairs"] = int(len(om.pairs.keys))
        md.attrs["n_layers"] = int(om.pairs.n_layers)
        md.create_dataset("ast_nodes", data=np.array(om.ast_nodes, dtype=h5py.string_dtype()), track_times=False)
        md.create_dataset("builtin_objs", data=np.array(om.builtin_objs, dtype=h5py.string_dtype()),
                          track_times=False)


def read_object_masks(path: os.PathLike | str, *, pairs: bool = True) -> ObjectMasks:
    """Read an object mask file; `pairs=False` skips the (large) pair group."""
    with open_h5(path) as f:
        for g in (G_UNIVERSAL, G_METADATA) + ((G_PAIR,) if pairs else ()):
            if g not in f:
                raise AtlasFileError(path, f"missing group /{g}")
        md = f[G_METADATA]
        for a in ("epsilon", "consistency_thresh"):
            if a not in md.attrs:
                raise AtlasFileError(path, f"/metadata has no attribute {a!r}")
        universals = _read_mask_group(f[G_UNIVERSAL], path)
        pair_stack = _read_mask_group(f[G_PAIR], path) if pairs else MaskStack([], np.zeros((0, universals.n_layers, universals.width), bool))
        metrics = f[G_METRICS] if G_METRICS in f else {}
        om = ObjectMasks(
            epsilon=float(md.attrs["epsilon"]), consistency=float(md.attrs["consistency_thresh"]),
            pairs=pair_stack, universals=universals,
            ast_nodes=_read_strings(md["ast_nodes"]) if "ast_nodes" in md else [],
            builtin_objs=_read_strings(md["builtin_objs"]) if "builtin_objs" in md else [],
            jaccard_ast=metrics["jaccard_ast_matrix"][()] if "jaccard_ast_matrix" in metrics else None,
            jaccard_builtin=metrics["jaccard_builtin_matrix"][()] if "jaccard_builtin_matrix" in metrics else None,
        )
    return om


def write_checker_masks(path: os.PathLike | str, cm: CheckerMasks) -> None:
    """Write `13_checker_masks_*.h5` or `token_checker_masks.h5` (group `token_checker_masks`), atomically."""
    with atomic_output(path) as tmp, _new_h5(tmp) as f:
        _write_mask_group(f.create_group(G_CHECKER), cm.masks)
        md = f.create_group(G_METADATA)
        md.attrs["epsilon"] = float(cm.epsilon)
        md.attrs["consistency_threshold"] = float(cm.consistency)
        for k, v in cm.extra_attrs.items():
            md.attrs[k] = v
        if cm.generation_stats is not None:
            gs = f.create_group(G_GEN_STATS)
            for key in sorted(cm.generation_stats):
                gs.attrs[f"{key}_n_valid"] = int(cm.generation_stats[key])


def read_checker_masks(path: os.PathLike | str) -> CheckerMasks:
    with open_h5(path) as f:
        for g in (G_CHECKER, G_METADATA):
            if g not in f:
                raise AtlasFileError(path, f"missing group /{g}")
        md = f[G_METADATA]
        for a in ("epsilon", "consistency_threshold"):
            if a not in md.attrs:
                raise AtlasFileError(path, f"/metadata has no attribute {a!r}")
        extra = {k: _plain(v) for k, v in md.attrs.items() if k not in ("epsilon", "consistency_threshold")}
        stats = None
        if G_GEN_STATS in f:
            stats = {k[: -len("_n_valid")]: int(v) for k, v in f[G_GEN_STATS].attrs.items() if k.endswith("_n_valid")}
        return CheckerMasks(float(md.attrs["epsilon"]), float(md.attrs["consistency_threshold"]),
                            _read_mask_group(f[G_CHECKER], path), extra, stats)


def _write_mask_group(group: h5py.Group, stack: MaskStack) -> None:
    masks = np.asarray(stack.masks, dtype=np.bool_)
    for l in range(stack.n_layers):
        _write_vectors(group.create_group(f"layer_{l}"), stack.keys, masks[:, l])


def _read_mask_group(group: h5py.Group, path) -> MaskStack:
    n_layers = _layer_count(group, path)
    keys = sorted(group["layer_0"].keys()) if n_layers else []
    return MaskStack(keys, _read_stack(group, keys, n_layers, np.bool_, path))


# ----------------------------------------------------------------------------- HDF5 helpers


def _layer_count(group: h5py.Group, path) -> int:
    names = list(group.keys())
    layers = sorted(int(n.split("_", 1)[1]) for n in names if re.fullmatch(r"layer_\d+", n))
    stray = [n for n in names if not re.fullmatch(r"layer_\d+", n)]
    if stray:
        raise AtlasFileError(path, f"unexpected member(s) {stray[:3]} in {group.name} (expected layer_0..layer_N)")
    if layers != list(range(len(layers))) or not layers:
        missing = sorted(set(range(max(layers, default=-1) + 1)) - set(layers)) or [0]
        raise AtlasFileError(path, f"{group.name} is missing layer group(s) {['layer_%d' % m for m in missing]}")
    return len(layers)


def _read_stack(group: h5py.Group, keys: list[str], n_layers: int, dtype, path) -> np.ndarray:
    """Read `group/layer_l/key` vectors into one (keys, layers, width) array, checking the layout.

    Uses h5py's low-level dataset API: an atlas has ~100k tiny datasets and the
    high-level wrapper costs more per dataset than the read itself.
    """
    dtype = np.dtype(dtype)
    width = None
    out = None
    for l in range(n_layers):
        lg = group[f"layer_{l}"]
        present = set(lg.keys())
        if present != set(keys):
            missing, extra = sorted(set(keys) - present), sorted(present - set(keys))
            raise AtlasFileError(path, f"{lg.name}: key set differs from the other layers "
                                       f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for i, key in enumerate(keys):
            try:
                ds = h5py.h5d.open(lg.id, key.encode())
            except (KeyError, ValueError, TypeError):
                raise AtlasFileError(path, f"{lg.name}/{key} is not a dataset") from None
            shape = ds.shape
            if len(shape) != 1:
                raise AtlasFileError(path, f"{lg.name}/{key} has shape {shape}, expected a vector")
            if width is None:
                width = shape[0]
                out = np.empty((len(keys), n_layers, width), dtype=dtype)
            elif shape[0] != width:
                raise AtlasFileError(path, f"{lg.name}/{key} has width {shape[0]}, expected {width} like the others")
            if ds.dtype != dtype:
                raise AtlasFileError(path, f"{lg.name}/{key} has dtype {ds.dtype}, expected {dtype}")
            ds.read(h5py.h5s.ALL, h5py.h5s.ALL, out[i, l])
    if out is None:
        out = np.zeros((0, n_layers, 0), dtype=dtype)
    return out


def _read_strings(ds: h5py.Dataset) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]]


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------- tables


def write_table(df: pd.DataFrame, path: os.PathLike | str, *, index: bool = False) -> None:
    """CSV or parquet by suffix, atomically. Parquet is written without pandas' index."""
    path = Path(path)
    with atomic_output(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=index)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=index, lineterminator="\n")
        else:
            raise ValueError(f"unsupported table suffix: {path}")


def read_table(path: os.PathLike | str, *, required: list[str] | tuple[str, ...] = (), index_col=None) -> pd.DataFrame:
    """Read a release table, checking the columns a consumer needs are present."""
    path = _require(Path(path))
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, index_col=index_col)
    except Exception as exc:  # pyarrow / pandas raise many types for a bad file
        raise AtlasFileError(path, f"unreadable table: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise AtlasFileError(path, f"missing column(s) {missing}; has {list(df.columns)}")
    return df


# Release column orders.
OBJECT_PROMPT_COLUMNS = ["ast_node", "builtin_obj", "variation_id", "prompt_text", "sequence_loss",
                         "token_length", "ast_verified"]
CHECKER_PROMPT_COLUMNS = ["object", "keyword", "variation_id", "prompt_text"]
SUMMARY_COLUMNS = ["epsilon", "consistency", "n_testable", "n_ast", "n_builtin", "mean_concept_fraction",
                   "mean_token_fraction", "ast_concept_fraction", "ast_token_fraction", "blt_concept_fraction",
                   "blt_token_fraction", "mean_A_size", "mean_B_size"]
DECOMPOSITION_COLUMNS = ["target", "layer", "concept_only", "shared", "token_only"]


def read_target_checker(path: os.PathLike | str) -> pd.DataFrame:
    """`14_target_checker_*.csv` ("co / sh / to" cells) -> long rows: target, layer, concept_only, shared, token_only."""
    wide = read_table(path, required=["target"])
    layer_cols = [c for c in wide.columns if re.fullmatch(r"L\d+", c)]
    rows = []
    for _, r in wide.iterrows():
        for c in layer_cols:
            parts = str(r[c]).split(" / ")
            if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
                raise AtlasFileError(path, f"cell ({r['target']}, {c}) = {r[c]!r} is not 'co / sh / to'")
            rows.append((r["target"], int(c[1:]), *map(int, parts)))
    return pd.DataFrame(rows, columns=DECOMPOSITION_COLUMNS)


def format_target_checker(long: pd.DataFrame) -> pd.DataFrame:
    """Inverse of `read_target_checker`: one row per target (sorted), columns L0..L7 of 'co / sh / to'."""
    cells = long.assign(cell=long.concept_only.astype(str) + " / " + long.shared.astype(str) + " / "
                        + long.token_only.astype(str))
    wide = cells.pivot(index="target", columns="layer", values="cell").sort_index()
    wide.columns = [f"L{int(l)}" for l in wide.columns]
    return wide.reset_index()


def write_target_checker(path: os.PathLike | str, long: pd.DataFrame) -> None:
    write_table(format_target_checker(long), path)


# ----------------------------------------------------------------------------- analysis-friendly loaders


def load_universal_masks(root: os.PathLike | str, epsilon: float = 0.5, consistency: float = 0.8
                         ) -> dict[str, dict[int, set[int]]]:
    """`{concept: {layer: set of active channels}}` from a raw release folder (the paper's loader shape)."""
    return read_object_masks(Path(root) / object_masks_name(epsilon, consistency), pairs=False).universals.as_sets()


def load_universal_mask_stack(root: os.PathLike | str, epsilon: float = 0.5, consistency: float = 0.8) -> MaskStack:
    """Universal masks as one boolean `(concepts, layers, width)` array, from raw files or an exported folder.

    A folder holding the raw release file is read directly; otherwise the exported
    parquet config `masks_eps{E}_cons{C}` under `data/` is used.
    """
    root = Path(root)
    raw = root / object_masks_name(epsilon, consistency)
    if raw.is_file():
        return read_object_masks(raw, pairs=False).universals
    return mask_stack_from_parquet(root / "data" / f"masks_{setting_tag(epsilon, consistency)}", key_column="concept")


def mask_stack_from_parquet(config_dir: os.PathLike | str, key_column: str) -> MaskStack:
    """Rebuild a MaskStack from an exported mask config (rows of key, layer, mask)."""
    config_dir = Path(config_dir)
    files = sorted(config_dir.glob("*.parquet"))
    if not files:
        raise AtlasFileError(config_dir, "no parquet files (neither a raw mask file nor an exported config found)")
    df = pd.concat([pd.read_parquet(p, columns=[key_column, "layer", "mask"]) for p in files], ignore_index=True)
    keys = sorted(df[key_column].unique())
    n_layers = int(df["layer"].max()) + 1
    width = len(df["mask"].iloc[0])
    masks = np.zeros((len(keys), n_layers, width), dtype=bool)
    index = {k: i for i, k in enumerate(keys)}
    for key, layer, mask in zip(df[key_column], df["layer"], df["mask"]):
        masks[index[key], int(layer)] = np.asarray(mask, dtype=bool)
    return MaskStack(keys, masks)
