"""The atlas validator: is this folder complete, internally consistent and what the code produces?

    report = validate_atlas("build/CSP-Atlas")      # a raw folder, or an exported one (data/ + raw files)
    print(report.render())
    report.ok                                       # False if any check failed

Checks run in dependency order; each yields one `CheckResult` per file it looks at:

    presence          every expected file is there (the manifest's list; else the release's)
    checksum          size and sha256 equal the manifest's (skipped without a manifest)
    hdf5_structure    groups, layers 0..N-1, one width, dtypes, no stray datasets or groups
    table_schema      tables are readable and have the release's columns in order
    finite            no NaN / inf in activations, metrics or table values
    duplicates        no two prompt rows with the same unit and variation_id
    counts            units, concepts, keyword concepts and prompts per unit agree with the
                      prompt parquets, the metadata and the concept inventory
    metadata_setting  a mask file's /metadata ε and C are the ones in its name
    thresholds        every mask = thresholds of its activations at (ε, C)   (needs 12_*.h5)
    marginalisation   every universal mask = AND of the present pair masks
    jaccard_metrics   /metrics = the layer-4 Jaccard matrices of the universal masks
    decomposition     14_target_checker_* = decomposition of the universal vs checker masks
    summary           14_summary.csv = means of the 14_target_checker rows
    modularity        relaxed_modularity_*.csv = recomputation from the ε=0.5, C=0.8 masks
    token_independence  token_independence_*.csv = recomputation (5B)
    parquet_configs   every data/<config> parquet = rows rebuilt from its raw source

Every recomputation calls the pipeline's own implementation (masks, decomposition,
modularity, token_independence, the CSP-Atlas.py row generators) — the validator never
re-implements an algorithm.

How failures are localised: a file that cannot be read (missing, broken HDF5 structure,
unreadable table, NaN) is skipped by every later check that needs it; a file that fails a
content check is still checked further on its own, but checks of *other* files that would
use it as an input are skipped ("input X failed check Y"), so one fault is reported where it
is, not again in everything derived from it. A checksum mismatch alone does not stop anything.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import h5py
import numpy as np
import pandas as pd

from builder_utils import layout, manifest as manifest_mod
from builder_utils.concepts import (AST_NODES, BUILTIN_OBJECTS, KEYWORD_MAP, concept_key, split_concept_key,
                                    split_pair_key)
from builder_utils.layout import AtlasFileError, MaskStack

MAX_DIFFS = 5                     # first differences shown per failing check
FLOAT_TOL = 1e-9                  # table floats are rounded to ≤ 4 dp; anything above this is a real change
DATA_DIR = "data"
CHECK_ORDER = ("presence", "checksum", "hdf5_structure", "table_schema", "finite", "duplicates", "counts",
               "metadata_setting", "thresholds", "marginalisation", "jaccard_metrics", "decomposition", "summary",
               "modularity", "token_independence", "parquet_configs")
# Checks whose failure makes a file unreadable for every later check.
READ_CHECKS = ("presence", "hdf5_structure", "table_schema", "finite")


# ----------------------------------------------------------------------------- results


@dataclass
class CheckResult:
    name: str                 # the check, one of CHECK_ORDER
    file: str                 # the file (or data/<config>) it is about, relative to the atlas folder
    ok: bool                  # False only for a failure; a skipped check is ok
    message: str = ""
    skipped: bool = False


@dataclass
class ValidationReport:
    root: Path
    results: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def failed(self) -> set[tuple[str, str]]:
        """`{(check, file)}` of every failure."""
        return {(r.name, r.file) for r in self.failures}

    def by_check(self, name: str) -> list[CheckResult]:
        return [r for r in self.results if r.name == name]

    def render(self) -> str:
        lines = [f"CSP-Atlas validation of {self.root}"]
        lines += [f"  {n}" for n in self.notes]
        lines.append("")
        for name in CHECK_ORDER:
            rs = self.by_check(name)
            if not rs:
                continue
            fails = [r for r in rs if not r.ok]
            skips = [r for r in rs if r.skipped]
            passed = len(rs) - len(fails) - len(skips)
            status = "FAIL" if fails else ("SKIP" if not passed else "PASS")
            counts = f"{passed} passed" + (f", {len(fails)} FAILED" if fails else "") + (
                f", {len(skips)} skipped" if skips else "")
            lines.append(f"{status}  {name:<19} {counts}")
            for r in fails:
                head, *rest = r.message.splitlines() or [""]
                lines.append(f"      ✗ {r.file}: {head}")
                lines += [f"          {x}" for x in rest]
            for why, files in _group_skips(skips).items():
                shown = ", ".join(files[:4]) + (f" (+{len(files) - 4} more)" if len(files) > 4 else "")
                lines.append(f"      - skipped {shown}: {why}")
        n_fail = len(self.failures)
        lines.append("")
        lines.append(f"Result: {'OK' if self.ok else 'FAILED'} — {n_fail} failure(s), "
                     f"{sum(not r.skipped and r.ok for r in self.results)} passed, "
                     f"{sum(r.skipped for r in self.results)} skipped.")
        return "\n".join(lines)


def _group_skips(skips: list[CheckResult]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in skips:
        out.setdefault(r.message, []).append(r.file)
    return out


# ----------------------------------------------------------------------------- the atlas being validated


def _setting_of(name: str) -> tuple[float, float] | None:
    m = re.search(r"_(eps[0-9.]+_cons[0-9.]+)\.(h5|csv)$", name)
    if m:
        return layout.parse_setting_tag(m[1])
    if name == layout.TOKEN_CHECKER_MASKS:
        return layout.TOKEN_CHECKER_SETTING
    return None


H5_FILES = {layout.OBJECT_ACTIVATIONS: "activations", layout.CHECKER_ACTIVATIONS: "activations",
            layout.TOKEN_CHECKER_ACTIVATIONS: "activations", layout.TOKEN_CHECKER_MASKS: "token_checker_masks",
            **{layout.object_masks_name(e, c): "object_masks" for e, c in layout.SETTINGS},
            **{layout.checker_masks_name(e, c): "checker_masks" for e, c in layout.SETTINGS}}
# Activations and their threshold source: which activation file each mask file comes from.
ACTIVATIONS_FOR = {**{layout.object_masks_name(e, c): layout.OBJECT_ACTIVATIONS for e, c in layout.SETTINGS},
                   **{layout.checker_masks_name(e, c): layout.CHECKER_ACTIVATIONS for e, c in layout.SETTINGS},
                   layout.TOKEN_CHECKER_MASKS: layout.TOKEN_CHECKER_ACTIVATIONS}
PROMPTS_FOR = {layout.OBJECT_ACTIVATIONS: layout.OBJECT_PROMPTS, layout.CHECKER_ACTIVATIONS: layout.CHECKER_PROMPTS,
               layout.TOKEN_CHECKER_ACTIVATIONS: layout.TOKEN_CHECKER_PROMPTS,
               layout.TOKEN_CHECKER_MASKS: layout.TOKEN_CHECKER_PROMPTS,
               **{layout.checker_masks_name(e, c): layout.CHECKER_PROMPTS for e, c in layout.SETTINGS}}
OPTIONAL_FILES = {layout.OBJECT_ACTIVATIONS, layout.CHECKER_ACTIVATIONS, layout.TOKEN_CHECKER_ACTIVATIONS,
                  layout.OBJECT_PROMPT_STATS}

# The release's table columns, in order ("" = the unnamed index column of the scores CSV).
TABLE_COLUMNS: dict[str, list[str]] = {
    layout.OBJECT_PROMPTS: layout.OBJECT_PROMPT_COLUMNS,
    layout.CHECKER_PROMPTS: layout.CHECKER_PROMPT_COLUMNS,
    layout.TOKEN_CHECKER_PROMPTS: layout.CHECKER_PROMPT_COLUMNS,
    layout.SUMMARY: layout.SUMMARY_COLUMNS,
    **{layout.target_checker_name(e, c): ["target"] + [f"L{l}" for l in range(layout.N_LAYERS)]
       for e, c in layout.SETTINGS},
    layout.MODULARITY_SCORES: ["", "type", "p=0.0", "p=0.05", "p=0.1", "p=0.25"],
    layout.MODULARITY_DETAIL: ["object", "type", "layer", "p_trim", "observed_trimmed_jaccard", "percentile",
                               "significant"],
    layout.TOKEN_INDEPENDENCE_SUMMARY: ["object", "type", "keyword", "concept_fraction", "token_fraction", "A_size",
                                        "A_and_B", "A_only", "B_only"],
    layout.TOKEN_INDEPENDENCE_DETAIL: ["A_size", "B_size", "A_only", "A_and_B", "B_only", "token_fraction",
                                       "concept_fraction", "object", "type", "keyword", "layer"],
    layout.TOKEN_INDEPENDENCE_NO_KEYWORD: ["object", "status"],
}
# Prompt tables: the columns that name a unit.
UNIT_COLUMNS = {layout.OBJECT_PROMPTS: ["ast_node", "builtin_obj"], layout.CHECKER_PROMPTS: ["object"],
                layout.TOKEN_CHECKER_PROMPTS: ["object"]}


class _Skip(Exception):
    """Raised inside a check: record it as skipped with this reason."""


class _Atlas:
    """The folder under validation, its manifest, what is known to be broken, and cached reads."""

    def __init__(self, root: Path, n_layers: int):
        self.root, self.n_layers = root, n_layers
        self.unreadable: dict[str, str] = {}      # file -> "failed <check>" / "absent"
        self.suspect: dict[str, str] = {}         # file -> "failed <check>"
        self.manifest: dict | None = None
        self.manifest_error: str | None = None
        self._cache: dict = {}

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def need(self, *names: str, own: str | None = None) -> None:
        """Raise _Skip unless every input is present and readable (and, except `own`, not suspect)."""
        for n in names:
            if not self.has(n):
                raise _Skip(f"{n} is absent")
            if n in self.unreadable:
                raise _Skip(f"{n} {self.unreadable[n]}")
            if n != own and n in self.suspect:
                raise _Skip(f"input {n} {self.suspect[n]}")

    def cached(self, key, fn: Callable):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def object_masks(self, name: str) -> layout.ObjectMasks:
        return self.cached(("om", name), lambda: layout.read_object_masks(self.path(name)))

    def checker_masks(self, name: str) -> layout.CheckerMasks:
        return self.cached(("cm", name), lambda: layout.read_checker_masks(self.path(name)))

    def activations(self, name: str) -> layout.Activations:
        return self.cached(("act", name), lambda: layout.read_activations(self.path(name)))

    def table(self, name: str) -> pd.DataFrame:
        return self.cached(("tab", name), lambda: _read_raw_table(self.path(name)))

    def present(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.has(n)]


def _read_raw_table(path: Path) -> pd.DataFrame:
    """A table as stored: parquet as is, CSV with every column (the scores' index as column '')."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    df = pd.read_csv(path, keep_default_na=True)
    return df.rename(columns={c: "" for c in df.columns if str(c).startswith("Unnamed: 0")})


# ----------------------------------------------------------------------------- the driver


def validate_atlas(atlas_dir: os.PathLike | str, *, n_layers: int = layout.N_LAYERS,
                   parquet: bool = True) -> ValidationReport:
    """Validate a raw release folder or an exported one (with `data/`); never raises for a bad atlas."""
    root = Path(atlas_dir)
    report = ValidationReport(root)
    if not root.is_dir():
        report.results.append(CheckResult("presence", str(root), False, "atlas folder not found"))
        return report
    with _shared_reads():
        _validate(_Atlas(root, n_layers), report, parquet)
    return report


@contextlib.contextmanager
def _shared_reads():
    """During one validation, read each HDF5 file once, whoever asks.

    The checks and the CSP-Atlas.py row generators all read through `layout.read_*`; a full
    read of an atlas is most of the validator's time, so those readers are memoised (by path,
    size and mtime) for the duration and restored afterwards. Failed reads are not memoised.
    """
    names = ("read_object_masks", "read_checker_masks", "read_activations")
    originals = {n: getattr(layout, n) for n in names}
    memo: dict = {}

    def memoised(name):
        def read(path, **kwargs):
            p = Path(path).resolve()
            st = p.stat() if p.exists() else None
            key = (name, p, st and (st.st_size, st.st_mtime_ns))
            if st is None:
                return originals[name](path)
            if key not in memo:
                # Object masks: always read the pairs too, so the pairs=False callers share the read.
                memo[key] = originals[name](path)
            return memo[key]
        return read

    try:
        for n in names:
            setattr(layout, n, memoised(n))
        yield
    finally:
        for n, fn in originals.items():
            setattr(layout, n, fn)


def _validate(atlas: _Atlas, report: ValidationReport, parquet: bool) -> None:
    _load_manifest(atlas, report)
    has = atlas.present
    h5, tables = has(H5_FILES), has(TABLE_COLUMNS)
    object_masks = has(layout.object_masks_name(e, c) for e, c in layout.SETTINGS)
    checksummed = ([a["name"] for a in atlas.manifest["artifacts"]] if atlas.manifest is not None
                   else [layout.MANIFEST])          # one "skipped: no manifest" line
    steps = [
        ("presence", _expected_files(atlas), check_presence),
        ("checksum", checksummed, check_checksum),
        ("hdf5_structure", h5, check_hdf5_structure),
        ("table_schema", tables, check_table_schema),
        ("finite", h5 + tables, check_finite),
        ("duplicates", has(UNIT_COLUMNS), check_duplicates),
        # Prompt tables first: the counts of every HDF5 file are checked against them.
        ("counts", has(list(UNIT_COLUMNS) + list(H5_FILES)), check_counts),
        ("metadata_setting", has(n for n, kind in H5_FILES.items() if kind != "activations"),
         check_metadata_setting),
        ("thresholds", has(ACTIVATIONS_FOR), check_thresholds),
        ("marginalisation", object_masks, check_marginalisation),
        ("jaccard_metrics", object_masks, check_jaccard_metrics),
        ("decomposition", has(layout.target_checker_name(e, c) for e, c in layout.SETTINGS), check_decomposition),
        ("summary", has([layout.SUMMARY]), check_summary),
        ("modularity", has([layout.MODULARITY_SCORES, layout.MODULARITY_DETAIL]), check_modularity),
        ("token_independence", has([layout.TOKEN_INDEPENDENCE_SUMMARY, layout.TOKEN_INDEPENDENCE_DETAIL,
                                    layout.TOKEN_INDEPENDENCE_NO_KEYWORD]), check_token_independence),
    ]
    for name, files, fn in steps:
        for f in files:
            _run(atlas, report, name, f, fn)
        if name == "hdf5_structure":
            _check_widths(atlas, report)

    if parquet and (atlas.root / DATA_DIR).is_dir():
        _run_parquet_checks(atlas, report)
    elif parquet:
        report.notes.append(f"no {DATA_DIR}/ folder: a raw release folder, parquet configs not checked")


def _run(atlas: _Atlas, report: ValidationReport, name: str, file: str, fn: Callable) -> CheckResult:
    try:
        problems = fn(atlas, file)
        res = CheckResult(name, file, not problems, "\n".join(problems) if problems else "")
        if isinstance(problems, _Passed):
            res.message = problems.message
    except _Skip as why:
        res = CheckResult(name, file, True, str(why), skipped=True)
    except AtlasFileError as exc:
        res = CheckResult(name, file, False, f"{exc.path.name}: {exc.problem}")
    except Exception as exc:  # a bug or an unforeseen corruption: report it against the file, keep going
        res = CheckResult(name, file, False, f"{type(exc).__name__}: {exc}")
    if not res.ok:
        if name in READ_CHECKS:
            atlas.unreadable.setdefault(file, f"failed {name}")
        elif name != "checksum":
            atlas.suspect.setdefault(file, f"failed {name}")
    report.results.append(res)
    return res


class _Passed(list):
    """An empty problem list that carries an explanatory message (e.g. which mode matched)."""

    def __init__(self, message: str):
        super().__init__()
        self.message = message


# ----------------------------------------------------------------------------- presence and checksums


def _load_manifest(atlas: _Atlas, report: ValidationReport) -> None:
    if not atlas.has(layout.MANIFEST):
        report.notes.append(f"no {layout.MANIFEST}: checksums not verified (the Hub release has none)")
        return
    try:
        atlas.manifest = manifest_mod.read_manifest(atlas.root)
        report.notes.append(f"{layout.MANIFEST}: {len(atlas.manifest['artifacts'])} artifact(s) listed")
    except AtlasFileError as exc:
        atlas.manifest_error = exc.problem
        report.notes.append(f"{layout.MANIFEST} unreadable: {exc.problem}")


def _expected_files(atlas: _Atlas) -> list[str]:
    required = layout.release_file_names(include_activations=False)
    if atlas.manifest is not None:
        listed = [a["name"] for a in atlas.manifest["artifacts"]]
        return listed + [n for n in required if n not in listed]
    return required


def check_presence(atlas: _Atlas, name: str) -> list[str]:
    if atlas.has(name):
        return []
    atlas.unreadable[name] = "is absent"
    if name in OPTIONAL_FILES:   # activations are derivable and left out of the Hub release
        raise _Skip("optional file, absent")
    source = "listed in the manifest" if atlas.manifest and any(
        a["name"] == name for a in atlas.manifest["artifacts"]) else "a release file"
    return [f"file not found ({source})"]


def check_checksum(atlas: _Atlas, name: str) -> list[str]:
    if atlas.manifest is None:
        if atlas.manifest_error:
            return [f"manifest unreadable: {atlas.manifest_error}"]
        raise _Skip(f"no {layout.MANIFEST}")
    entry = next(a for a in atlas.manifest["artifacts"] if a["name"] == name)
    if not atlas.has(name):
        raise _Skip("file absent (reported by presence)")
    path = atlas.path(name)
    problems = []
    size = path.stat().st_size
    if size != entry["size"]:
        problems.append(f"size {size} B ≠ manifest {entry['size']} B")
    digest = manifest_mod.sha256_file(path)
    if digest != entry["sha256"]:
        problems.append(f"sha256 {digest[:16]}… ≠ manifest {str(entry['sha256'])[:16]}… "
                        f"(made by stage {entry.get('stage', '?')})")
    return problems


# ----------------------------------------------------------------------------- HDF5 structure


_H5_LAYOUT = {
    # kind: (required groups, optional groups, {layered group: dtype})
    "activations": ({layout.G_ACTIVATIONS, layout.G_FIRING, layout.G_NPROMPTS, layout.G_METADATA}, set(),
                    {layout.G_ACTIVATIONS: np.float32, layout.G_FIRING: np.int32}),
    "object_masks": ({layout.G_PAIR, layout.G_UNIVERSAL, layout.G_METADATA}, {layout.G_METRICS},
                     {layout.G_PAIR: np.bool_, layout.G_UNIVERSAL: np.bool_}),
    "checker_masks": ({layout.G_CHECKER, layout.G_METADATA}, set(), {layout.G_CHECKER: np.bool_}),
    "token_checker_masks": ({layout.G_CHECKER, layout.G_METADATA}, {layout.G_GEN_STATS},
                            {layout.G_CHECKER: np.bool_}),
}
_METADATA_ATTRS = {"activations": {"model_id", "n_layers", "n_pairs", "input_file"},
                   "object_masks": {"epsilon", "consistency_thresh", "n_pairs", "n_layers"},
                   "checker_masks": {"epsilon", "consistency_threshold"},
                   "token_checker_masks": {"epsilon", "consistency_threshold"}}
_METADATA_DATASETS = {"activations": ({"ast_nodes", "builtin_objs"}, False),   # (names, required)
                      "object_masks": ({"ast_nodes", "builtin_objs"}, True),
                      "checker_masks": (set(), False), "token_checker_masks": (set(), False)}
_METRICS = {"jaccard_ast_matrix", "jaccard_builtin_matrix"}


def check_hdf5_structure(atlas: _Atlas, name: str) -> list[str]:
    kind = H5_FILES[name]
    required, optional, layered = _H5_LAYOUT[kind]
    problems: list[str] = []
    try:
        f = h5py.File(atlas.path(name), "r")
    except OSError as exc:
        return [f"not a readable HDF5 file (truncated or corrupt?): {exc}"]
    widths: Counter = Counter()
    odd_width: list = []       # (dataset, width) of every vector
    nonfinite: list[str] = []  # found on the way; reported by the `finite` check
    with f:
        members = set(f.keys())
        for g in sorted(required - members):
            problems.append(f"missing group /{g}")
        for g in sorted(members - required - optional):
            problems.append(f"stray member /{g} (expected only {sorted(required | optional)})")
        for g in sorted(members & (required | optional)):
            if not isinstance(f[g], h5py.Group):
                problems.append(f"/{g} is a dataset, expected a group")
        keysets = {}
        for g, dtype in layered.items():
            if isinstance(f.get(g), h5py.Group):
                keysets[g] = _check_layered(f[g], dtype, atlas.n_layers, widths, problems, odd_width, nonfinite)
        ks = [k for k in keysets.values() if k is not None]
        if len(ks) == 2 and kind == "activations" and ks[0] != ks[1]:
            problems.append(f"/{layout.G_ACTIVATIONS} and /{layout.G_FIRING} hold different keys "
                            f"(e.g. {sorted(ks[0] ^ ks[1])[:3]})")
        if kind == "activations" and isinstance(f.get(layout.G_NPROMPTS), h5py.Group):
            _check_n_prompts(f[layout.G_NPROMPTS], ks[0] if ks else None, problems)
        if isinstance(f.get(layout.G_METADATA), h5py.Group):
            _check_metadata(f[layout.G_METADATA], kind, problems)
        if isinstance(f.get(layout.G_METRICS), h5py.Group):
            _check_metrics(f[layout.G_METRICS], problems, nonfinite)
        if isinstance(f.get(layout.G_GEN_STATS), h5py.Group):
            gs = f[layout.G_GEN_STATS]
            if len(gs):
                problems.append(f"stray member(s) in /{layout.G_GEN_STATS}: {list(gs)[:3]} (it holds attributes only)")
            bad = [k for k in gs.attrs if not k.endswith("_n_valid")]
            if bad:
                problems.append(f"/{layout.G_GEN_STATS} has unexpected attribute(s) {bad[:3]}")
    if len(widths) > 1:
        common = widths.most_common(1)[0][0]
        problems.append(f"vectors of different widths ({dict(widths)} datasets per width); expected one: "
                        + ", ".join([f"{n} has width {w}" for n, w in odd_width if w != common][:MAX_DIFFS]))
    if widths and not problems:
        atlas.cached(("width", name), lambda: widths.most_common(1)[0][0])
    atlas.cached(("nonfinite", name), lambda: nonfinite)
    return problems[:MAX_DIFFS] + ([f"... and {len(problems) - MAX_DIFFS} more"] if len(problems) > MAX_DIFFS else [])


def _check_layered(group: h5py.Group, dtype, n_layers: int, widths: Counter, problems: list[str],
                   odd_width: list, nonfinite: list[str]) -> set | None:
    """`group/layer_l/<key>` vectors: layers 0..n-1, same keys per layer, dtype, one width.

    Uses h5py's low-level object API: the high-level one costs ~3× more per dataset, and the
    release has ~120,000 of them. Float vectors are read and scanned for NaN/inf on the way.
    """
    expected = [f"layer_{l}" for l in range(n_layers)]
    names = list(group.keys())
    missing = [n for n in expected if n not in names]
    stray = [n for n in names if n not in expected]
    if missing:
        problems.append(f"{group.name} is missing layer group(s) {missing}")
    if stray:
        problems.append(f"stray member(s) in {group.name}: {stray[:3]} (expected layer_0..layer_{n_layers - 1})")
    keyset = None
    want = np.dtype(dtype)
    for ln in expected:
        if ln not in names:
            continue
        lg = group[ln]
        if not isinstance(lg, h5py.Group):
            problems.append(f"{lg.name} is a dataset, expected a group")
            continue
        keys = set(lg.keys())
        if keyset is None:
            keyset = keys
        elif keys != keyset:
            problems.append(f"{lg.name} holds different keys than {group.name}/layer_0 "
                            f"(missing {sorted(keyset - keys)[:3]}, extra {sorted(keys - keyset)[:3]})")
        for k in sorted(keys):
            obj = h5py.h5o.open(lg.id, k.encode())
            path = f"{lg.name}/{k}"
            if not isinstance(obj, h5py.h5d.DatasetID):
                problems.append(f"stray group {path} (expected a vector dataset)")
                continue
            if len(obj.shape) != 1:
                problems.append(f"{path} has shape {obj.shape}, expected a vector")
                continue
            if obj.dtype != want:
                problems.append(f"{path} has dtype {obj.dtype}, expected {want}")
            widths[obj.shape[0]] += 1
            odd_width.append((path, obj.shape[0]))
            if obj.dtype.kind == "f":
                data = np.empty(obj.shape, obj.dtype)
                obj.read(h5py.h5s.ALL, h5py.h5s.ALL, data)
                bad = ~np.isfinite(data)
                if bad.any():
                    nonfinite.append(f"{path}: {int(bad.sum())} NaN/inf value(s), first at channel "
                                     f"{int(np.flatnonzero(bad)[0])}")
    return keyset


def _check_n_prompts(group: h5py.Group, keys: set | None, problems: list[str]) -> None:
    names = set(group.keys())
    if keys is not None and names != keys:
        problems.append(f"/{layout.G_NPROMPTS} keys differ from the activation keys "
                        f"(e.g. {sorted(names ^ keys)[:3]})")
    for k in sorted(names):
        ds = group[k]
        if not isinstance(ds, h5py.Dataset) or ds.shape != () or np.dtype(ds.dtype) != np.int64:
            problems.append(f"{group.name}/{k} must be a scalar int64 dataset")
            return


def _check_metadata(md: h5py.Group, kind: str, problems: list[str]) -> None:
    missing = sorted(_METADATA_ATTRS[kind] - set(md.attrs))
    if missing:
        problems.append(f"/metadata lacks attribute(s) {missing}")
    allowed, required = _METADATA_DATASETS[kind]
    names = set(md.keys())
    if required and allowed - names:
        problems.append(f"/metadata lacks dataset(s) {sorted(allowed - names)}")
    if names - allowed:
        problems.append(f"stray member(s) in /metadata: {sorted(names - allowed)[:3]}")
    for n in sorted(names & allowed):
        ds = md[n]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or h5py.check_string_dtype(ds.dtype) is None:
            problems.append(f"/metadata/{n} must be a vector of strings")


def _check_metrics(mg: h5py.Group, problems: list[str], nonfinite: list[str]) -> None:
    for n in sorted(set(mg.keys()) - _METRICS):
        problems.append(f"stray member /metrics/{n} (expected only {sorted(_METRICS)})")
    for n in sorted(set(mg.keys()) & _METRICS):
        ds = mg[n]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[0] != ds.shape[1] \
                or np.dtype(ds.dtype) != np.float64:
            problems.append(f"/metrics/{n} must be a square float64 matrix")
        elif not np.isfinite(ds[()]).all():
            nonfinite.append(f"/metrics/{n}: NaN/inf value(s)")


def _check_widths(atlas: _Atlas, report: ValidationReport) -> None:
    """Every HDF5 file of one atlas has the same vector width: flag the odd ones out."""
    widths = {n: atlas._cache[("width", n)] for n in H5_FILES if ("width", n) in atlas._cache}
    if not widths:
        return
    common = Counter(widths.values()).most_common(1)[0][0]
    for res in report.by_check("hdf5_structure"):
        w = widths.get(res.file)
        if res.ok and not res.skipped and w is not None and w != common:
            res.ok, res.message = False, f"vectors have width {w}, the rest of the atlas {common}"
            atlas.unreadable.setdefault(res.file, "failed hdf5_structure")


# ----------------------------------------------------------------------------- tables


def check_table_schema(atlas: _Atlas, name: str) -> list[str]:
    try:
        df = atlas.table(name)
    except Exception as exc:  # pyarrow / pandas raise many kinds for a damaged file
        return [f"unreadable table: {type(exc).__name__}: {exc}"]
    want, have = TABLE_COLUMNS[name], [str(c) for c in df.columns]
    if have == want:
        return []
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if missing or extra:
        return [f"columns differ from the release: missing {missing}, unexpected {extra}"]
    return [f"columns in a different order: {have} (release: {want})"]


_NULLABLE = {layout.SUMMARY: {"ast_concept_fraction": "n_ast", "ast_token_fraction": "n_ast",
                              "blt_concept_fraction": "n_builtin", "blt_token_fraction": "n_builtin"}}


def check_finite(atlas: _Atlas, name: str) -> list[str]:
    atlas.need(name)
    if name in H5_FILES:      # scanned by the hdf5_structure walk
        return atlas.cached(("nonfinite", name), lambda: _h5_finite(atlas.path(name)))[:MAX_DIFFS]
    df = atlas.table(name)
    problems = []
    for col in df.columns:
        s = df[col]
        if name.startswith("14_target_checker") and col != "target":
            continue      # "co / sh / to" strings: parsed by decomposition
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(vals)
            allowed = _NULLABLE.get(name, {}).get(col)
            if allowed is not None and allowed in df.columns:
                bad &= ~(np.isnan(vals) & (df[allowed].to_numpy() == 0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                problems.append(f"column {col!r}: {int(bad.sum())} NaN/inf value(s), first at row {i} ({vals[i]})")
        elif s.isna().any():
            i = int(np.flatnonzero(s.isna().to_numpy())[0])
            problems.append(f"column {col!r}: {int(s.isna().sum())} missing value(s), first at row {i}")
    return problems


def _h5_finite(path: Path) -> list[str]:
    problems = []

    def visit(name, obj):
        if len(problems) >= MAX_DIFFS or not isinstance(obj, h5py.Dataset) or obj.dtype.kind != "f":
            return
        data = obj[()]
        bad = ~np.isfinite(data)
        if np.any(bad):
            idx = np.argwhere(bad)[0].tolist() if np.ndim(data) else []
            problems.append(f"/{name}: {int(np.sum(bad))} NaN/inf value(s), first at index {idx}")

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return problems


def check_duplicates(atlas: _Atlas, name: str) -> list[str]:
    atlas.need(name)
    df = atlas.table(name)
    key = UNIT_COLUMNS[name] + ["variation_id"]
    dup = df.duplicated(key, keep=False)
    if not dup.any():
        return []
    rows = df[dup]
    first = rows.groupby(key, sort=False).head(2).head(2 * MAX_DIFFS)
    shown = [f"rows {list(g.index)}: {dict(zip(key, k if isinstance(k, tuple) else (k,)))}"
             for k, g in first.groupby(key, sort=False)]
    return [f"{int(dup.sum())} prompt rows share a (unit, variation_id) with another row"] + shown[:MAX_DIFFS]


# ----------------------------------------------------------------------------- counts


def _prompt_counts(atlas: _Atlas, prompts: str) -> dict[str, int]:
    atlas.need(prompts)
    df = atlas.table(prompts)
    cols = UNIT_COLUMNS[prompts]
    if len(cols) == 2:
        keys = [concept_pair for concept_pair in (f"{a}__{b}" for a, b in zip(df[cols[0]], df[cols[1]]))]
    else:
        keys = df[cols[0]].astype(str).tolist()
    return dict(Counter(keys))


def _set_diff(what: str, have: Iterable[str], want: Iterable[str], source: str) -> list[str]:
    have, want = set(have), set(want)
    if have == want:
        return []
    missing, extra = sorted(want - have), sorted(have - want)
    return [f"{what}: {len(have)} here vs {len(want)} in {source}"
            + (f"; missing {missing[:MAX_DIFFS]}" if missing else "")
            + (f"; unexpected {extra[:MAX_DIFFS]}" if extra else "")]


def _reference_pairs(atlas: _Atlas) -> tuple[set[str], str]:
    """The atlas' pair keys: from the object prompts (the source of everything), else skip."""
    return set(_prompt_counts(atlas, layout.OBJECT_PROMPTS)), layout.OBJECT_PROMPTS


def check_counts(atlas: _Atlas, name: str) -> list[str]:
    atlas.need(name, own=name)
    if name in UNIT_COLUMNS:
        return _counts_prompts(atlas, name)
    kind = H5_FILES[name]
    if kind == "activations":
        return _counts_activations(atlas, name)
    if kind == "object_masks":
        return _counts_object_masks(atlas, name)
    return _counts_checker_masks(atlas, name)


def _counts_prompts(atlas: _Atlas, name: str) -> list[str]:
    df = atlas.table(name)
    problems = []
    if name == layout.OBJECT_PROMPTS:
        bad_ast = sorted(set(df["ast_node"]) - set(AST_NODES))
        bad_blt = sorted(set(df["builtin_obj"]) - set(BUILTIN_OBJECTS))
        if bad_ast or bad_blt:
            problems.append(f"names outside the concept inventory: AST {bad_ast[:3]}, builtins {bad_blt[:3]}")
    else:
        unknown = sorted(set(df["object"]) - set(KEYWORD_MAP))
        if unknown:
            problems.append(f"{len(unknown)} object(s) are not keyword concepts: {unknown[:3]}")
        wrong = df[[KEYWORD_MAP.get(o, {}).get("keyword") != k for o, k in zip(df["object"], df["keyword"])]]
        wrong = wrong[wrong["object"].isin(list(KEYWORD_MAP))]
        if len(wrong):
            r = wrong.iloc[0]
            problems.append(f"{len(wrong)} row(s) with the wrong keyword, first row {wrong.index[0]}: "
                            f"{r['object']} has keyword {r['keyword']!r}, expected "
                            f"{KEYWORD_MAP[r['object']]['keyword']!r}")
    if (df["variation_id"] < 0).any():
        problems.append("negative variation_id")
    return problems


def _counts_activations(atlas: _Atlas, name: str) -> list[str]:
    acts = atlas.activations(name)
    problems = []
    prompts = PROMPTS_FOR[name]
    try:
        counts = _prompt_counts(atlas, prompts)
    except _Skip:       # no trustworthy prompt table: the other counts still apply
        counts = None
    if counts is not None:
        problems += _set_diff("units", acts.keys, counts, prompts)
        n = dict(zip(acts.keys, acts.n_prompts.tolist()))
        wrong = [(k, n[k], counts[k]) for k in acts.keys if k in counts and n[k] != counts[k]]
        if wrong:
            problems.append(f"n_prompts differs from the rows of {prompts} for {len(wrong)} unit(s): "
                            + ", ".join(f"{k}: {a} vs {b}" for k, a, b in wrong[:MAX_DIFFS]))
    if int(acts.attrs.get("n_pairs", -1)) != len(acts.keys):
        problems.append(f"/metadata n_pairs = {acts.attrs.get('n_pairs')}, but {len(acts.keys)} units are stored")
    if int(acts.attrs.get("n_layers", -1)) != acts.n_layers:
        problems.append(f"/metadata n_layers = {acts.attrs.get('n_layers')}, but {acts.n_layers} layers are stored")
    if name == layout.OBJECT_ACTIVATIONS:
        problems += _inventory_problems(acts.keys, acts.ast_nodes, acts.builtin_objs)
    else:
        problems += _keyword_problems(acts.keys)
    over = acts.firing_count > acts.n_prompts[:, None, None]
    if over.any() or (acts.firing_count < 0).any():
        u, l, ch = np.argwhere(over | (acts.firing_count < 0))[0]
        problems.append(f"firing count {acts.firing_count[u, l, ch]} of {acts.keys[u]} (layer {l}, channel {ch}) "
                        f"is outside [0, n_prompts = {acts.n_prompts[u]}]")
    return problems


def _inventory_problems(pairs: list[str], ast_nodes: list[str] | None, builtin_objs: list[str] | None) -> list[str]:
    problems = []
    try:
        split = [split_pair_key(k) for k in pairs]
    except ValueError as exc:
        return [str(exc)]
    asts, blts = sorted({a for a, _ in split}), sorted({b for _, b in split})
    bad = sorted(set(asts) - set(AST_NODES)) + sorted(set(blts) - set(BUILTIN_OBJECTS))
    if bad:
        problems.append(f"pair names outside the concept inventory: {bad[:MAX_DIFFS]}")
    if ast_nodes is not None and list(ast_nodes) != asts:
        problems.append(f"/metadata/ast_nodes {_list_diff(ast_nodes, asts)}")
    if builtin_objs is not None and list(builtin_objs) != blts:
        problems.append(f"/metadata/builtin_objs {_list_diff(builtin_objs, blts)}")
    return problems


def _list_diff(have: list, want: list) -> str:
    if sorted(have) == sorted(want):
        i = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
        return f"is not the sorted list of the pairs' names: position {i} holds {have[i]!r}, expected {want[i]!r}"
    return (f"({len(have)} names) differs from the pairs' names ({len(want)}): "
            f"missing {sorted(set(want) - set(have))[:3]}, unexpected {sorted(set(have) - set(want))[:3]}")


def _keyword_problems(keys: list[str]) -> list[str]:
    unknown = [k for k in keys if k not in KEYWORD_MAP]
    return [f"{len(unknown)} key(s) are not keyword concepts: {unknown[:MAX_DIFFS]}"] if unknown else []


def _counts_object_masks(atlas: _Atlas, name: str) -> list[str]:
    om = atlas.object_masks(name)
    problems = []
    try:
        pairs, source = _reference_pairs(atlas)
        problems += _set_diff("pairs", om.pairs.keys, pairs, source)
    except _Skip:
        pairs = set(om.pairs.keys)
    problems += _inventory_problems(om.pairs.keys, om.ast_nodes, om.builtin_objs)
    try:
        split = [split_pair_key(k) for k in pairs]
        concepts = [concept_key("ast", a) for a in {a for a, _ in split}] + [
            concept_key("builtin", b) for b in {b for _, b in split}]
        problems += _set_diff("universal concepts", om.universals.keys, concepts, "the pairs' AST nodes and builtins")
    except ValueError as exc:
        problems.append(str(exc))
    with h5py.File(atlas.path(name), "r") as f:
        md = f[layout.G_METADATA].attrs
        if int(md["n_pairs"]) != len(om.pairs.keys):
            problems.append(f"/metadata n_pairs = {md['n_pairs']}, but {len(om.pairs.keys)} pair masks are stored")
        if int(md["n_layers"]) != om.pairs.n_layers:
            problems.append(f"/metadata n_layers = {md['n_layers']}, but {om.pairs.n_layers} layers are stored")
    return problems


def _counts_checker_masks(atlas: _Atlas, name: str) -> list[str]:
    cm = atlas.checker_masks(name)
    problems = _keyword_problems(cm.masks.keys)
    prompts = PROMPTS_FOR[name]
    try:
        counts = _prompt_counts(atlas, prompts)
        problems += _set_diff("checker objects", cm.masks.keys, counts, prompts)
        if cm.generation_stats is not None:
            wrong = [(k, v, counts.get(k)) for k, v in sorted(cm.generation_stats.items()) if counts.get(k) != v]
            if wrong:
                problems.append(f"/generation_stats n_valid differs from the rows of {prompts} for {len(wrong)} "
                                f"object(s): " + ", ".join(f"{k}: {a} vs {b}" for k, a, b in wrong[:MAX_DIFFS]))
    except _Skip:
        pass
    if cm.generation_stats is not None:
        problems += _set_diff("/generation_stats objects", cm.generation_stats, cm.masks.keys, "the masks")
    return problems


# ----------------------------------------------------------------------------- masks


def check_metadata_setting(atlas: _Atlas, name: str) -> list[str]:
    atlas.need(name, own=name)
    want = _setting_of(name)
    with h5py.File(atlas.path(name), "r") as f:
        md = f[layout.G_METADATA].attrs
        c_attr = "consistency_thresh" if H5_FILES[name] == "object_masks" else "consistency_threshold"
        have = (float(md["epsilon"]), float(md[c_attr]))
    if have != want:
        return [f"/metadata says epsilon = {have[0]!r}, {c_attr} = {have[1]!r}; the file is for "
                f"ε = {want[0]!r}, C = {want[1]!r}"]
    return []


def _mask_diff(stored: MaskStack, expected: MaskStack, what: str, source: str) -> list[str]:
    problems = _set_diff(f"{what} keys", stored.keys, expected.keys, source)
    if problems:
        return problems
    if stored.masks.shape != expected.masks.shape:
        return [f"{what}: shape {stored.masks.shape} vs {expected.masks.shape} from {source}"]
    diff = stored.masks != expected.masks
    if not diff.any():
        return []
    units, layers = np.nonzero(diff.any(axis=2))
    out = [f"{what}: {int(diff.sum())} channel(s) in {len(set(units.tolist()))} mask(s) differ from {source}"]
    for u, l in list(zip(units.tolist(), layers.tolist()))[:MAX_DIFFS]:
        ch = np.flatnonzero(diff[u, l])
        out.append(f"{stored.keys[u]} layer {l}: channel(s) {ch[:8].tolist()} stored "
                   f"{stored.masks[u, l, ch[:8]].astype(int).tolist()}, expected "
                   f"{expected.masks[u, l, ch[:8]].astype(int).tolist()}")
    return out


def check_thresholds(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import masks

    source = ACTIVATIONS_FOR[name]
    if not atlas.has(source):
        raise _Skip(f"{source} is absent (activations are optional; the Hub release has none)")
    atlas.need(name, source, own=name)
    e, c = _setting_of(name)
    expected = masks.threshold_masks(atlas.activations(source), e, c)
    if H5_FILES[name] == "object_masks":
        stored = atlas.object_masks(name).pairs
        what = "pair masks"
    else:
        stored = atlas.checker_masks(name).masks
        what = "checker masks"
    return _mask_diff(stored, expected, what, f"thresholds of {source} at ε = {e!r}, C = {c!r}")


def check_marginalisation(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import masks

    atlas.need(name, own=name)
    om = atlas.object_masks(name)
    return _mask_diff(om.universals, masks.marginalise(om.pairs), "universal masks",
                      "the AND of the present pair masks")


def check_jaccard_metrics(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import masks

    atlas.need(name, own=name)
    om = atlas.object_masks(name)
    problems = []
    for kind, stored in (("ast", om.jaccard_ast), ("builtin", om.jaccard_builtin)):
        expected = masks.universal_jaccard(om.universals, kind)
        label = f"/metrics/jaccard_{kind}_matrix"
        if stored is None and expected is None:
            continue
        if stored is None:
            problems.append(f"{label} is missing")
        elif expected is None or stored.shape != expected.shape:
            problems.append(f"{label} has shape {stored.shape}, expected "
                            f"{None if expected is None else expected.shape}")
        else:
            bad = ~np.isclose(stored, expected, rtol=0, atol=FLOAT_TOL)
            if bad.any():
                names = [k for k in om.universals.keys if k.startswith(f"{kind}__")]
                i, j = np.argwhere(bad)[0]
                problems.append(f"{label}: {int(bad.sum())} entries differ from the layer-{layout.JACCARD_LAYER} "
                                f"Jaccard of the universal masks; first ({names[i]}, {names[j]}): stored "
                                f"{stored[i, j]:.6g}, expected {expected[i, j]:.6g}")
    return problems


# ----------------------------------------------------------------------------- tables = recomputation


def _frame_diff(stored: pd.DataFrame, expected: pd.DataFrame, key: list[str], source: str) -> list[str]:
    """First differences between two tables with the same columns (row order matters)."""
    stored, expected = stored.reset_index(drop=True), expected.reset_index(drop=True)
    if list(stored.columns) != list(expected.columns):
        return [f"columns {list(stored.columns)} vs {list(expected.columns)} from {source}"]
    if len(stored) != len(expected):
        out = [f"{len(stored)} rows vs {len(expected)} from {source}"]
        if all(k in stored.columns for k in key):
            sk = set(map(tuple, stored[key].astype(str).to_numpy().tolist()))
            ek = set(map(tuple, expected[key].astype(str).to_numpy().tolist()))
            if sk - ek:
                out.append(f"unexpected rows {sorted(sk - ek)[:3]}")
            if ek - sk:
                out.append(f"missing rows {sorted(ek - sk)[:3]}")
        return out
    bad = np.zeros(len(stored), dtype=bool)
    cols_bad: dict[int, list[str]] = {}
    for col in stored.columns:
        a, b = stored[col], expected[col]
        x, y = _floats(a), _floats(b)
        if x is not None and y is not None:
            if np.float32 in (a.dtype, b.dtype):    # a float32 value is written (and so stored) as its float32 repr
                x, y = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
            diff = ~(np.isclose(x, y, rtol=0, atol=FLOAT_TOL) | (np.isnan(x) & np.isnan(y)))
        else:
            diff = (a.astype(str).to_numpy() != b.astype(str).to_numpy()) & ~(a.isna() & b.isna()).to_numpy()
        for i in np.flatnonzero(diff)[:MAX_DIFFS * 4]:
            cols_bad.setdefault(int(i), []).append(col)
        bad |= diff
    if not bad.any():
        return []
    out = [f"{int(bad.sum())} of {len(stored)} rows differ from {source}"]
    for i in sorted(cols_bad)[:MAX_DIFFS]:
        ident = ", ".join(f"{k}={stored.at[i, k]}" for k in key if k in stored.columns)
        cells = "; ".join(f"{c}: stored {stored.at[i, c]!r}, expected {expected.at[i, c]!r}" for c in cols_bad[i])
        out.append(f"row {i} ({ident}): {cells}")
    return out


def _floats(s: pd.Series) -> np.ndarray | None:
    """A column as float64 (None -> NaN, bool -> 0/1), or None if it holds anything but numbers."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    vals = s.tolist()
    if all(v is None or (isinstance(v, (int, float, bool, np.number)) and not isinstance(v, str)) for v in vals):
        return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
    return None


def check_decomposition(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import decomposition

    e, c = _setting_of(name)
    om_name, cm_name = layout.object_masks_name(e, c), layout.checker_masks_name(e, c)
    atlas.need(name, om_name, cm_name, own=name)
    stored = layout.read_target_checker(atlas.path(name))
    rows = decomposition.decompose(atlas.object_masks(om_name).universals, atlas.checker_masks(cm_name).masks)
    expected = rows[layout.DECOMPOSITION_COLUMNS]
    return _frame_diff(stored, expected, ["target", "layer"], f"the decomposition of {om_name} vs {cm_name}")


def check_summary(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import decomposition

    atlas.need(name, own=name)
    stored = atlas.table(name)
    expected_rows, skipped = [], []
    for e, c in layout.SETTINGS:
        tc = layout.target_checker_name(e, c)
        try:
            atlas.need(tc)
        except _Skip as why:
            skipped.append((e, c, str(why)))
            continue
        long = layout.read_target_checker(atlas.path(tc))
        if long.empty:
            continue
        expected_rows.append(decomposition.summarise(decomposition.rows_from_counts(long), e, c))
    if skipped:   # compare only the settings whose table can be trusted
        drop = {(e, c) for e, c, _ in skipped}
        stored = stored[[(float(x), float(y)) not in drop for x, y in zip(stored.epsilon, stored.consistency)]]
        if not expected_rows and not len(stored):
            raise _Skip("no usable 14_target_checker table (" + "; ".join(w for *_, w in skipped[:2]) + ")")
    expected = pd.DataFrame(expected_rows, columns=layout.SUMMARY_COLUMNS)
    problems = _frame_diff(stored, expected, ["epsilon", "consistency"],
                           "the means of the 14_target_checker rows")
    if skipped and not problems:
        return _Passed(f"rows checked; not checked for {[(e, c) for e, c, _ in skipped]}: {skipped[0][2]}")
    return problems


def check_modularity(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import modularity

    source = layout.object_masks_name(*layout.REFERENCE_SETTING)
    atlas.need(name, source, own=name)
    universals = atlas.object_masks(source).universals
    stored = atlas.table(name)
    first = None
    # The pipeline sums in "sorted" order; the release's own script in "reference" order. Either is the code.
    for mode in modularity.SUMMATION_MODES:
        scores, detail = atlas.cached(("mod", mode), lambda: modularity.relaxed_modularity(universals, summation=mode))
        if name == layout.MODULARITY_SCORES:
            expected = scores.rename_axis("").reset_index()
            problems = _frame_diff(stored, expected, [""], f"relaxed modularity of {source}")
        else:
            problems = _frame_diff(stored, detail, ["object", "layer", "p_trim"], f"relaxed modularity of {source}")
        if not problems:
            return _Passed(f"matches the recomputation (summation={mode!r})")
        first = first or problems
    return first


def check_token_independence(atlas: _Atlas, name: str) -> list[str]:
    from builder_utils import token_independence as ti

    om_name = layout.object_masks_name(*layout.TOKEN_CHECKER_SETTING)
    atlas.need(name, om_name, layout.TOKEN_CHECKER_MASKS, own=name)
    universal = atlas.object_masks(om_name).universals
    checker = atlas.checker_masks(layout.TOKEN_CHECKER_MASKS).masks
    source = f"token independence of {om_name} vs {layout.TOKEN_CHECKER_MASKS}"
    detail = atlas.cached("ti_detail", lambda: ti.token_independence_detail(universal, checker))
    stored = atlas.table(name)
    if name == layout.TOKEN_INDEPENDENCE_DETAIL:
        return _frame_diff(stored, detail, ["object", "layer"], source)
    if name == layout.TOKEN_INDEPENDENCE_SUMMARY:
        return _frame_diff(stored, ti.token_independence_summary(detail), ["object"], source)
    return _frame_diff(stored, ti.no_keyword_table(universal), ["object"], f"the tokenless concepts of {om_name}")


# ----------------------------------------------------------------------------- parquet configs


def _run_parquet_checks(atlas: _Atlas, report: ValidationReport) -> None:
    from builder_utils import export

    module = export.load_builder_module()
    registry = {c.name: c for c in module.CONFIGS}
    data = atlas.root / DATA_DIR
    on_disk = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    report.notes.append(f"{DATA_DIR}/: {len(on_disk)} parquet config(s)")
    for name in on_disk:
        if name not in registry:
            report.results.append(CheckResult("parquet_configs", f"{DATA_DIR}/{name}", False,
                                              f"unknown config (not in CSP-Atlas.py's registry)"))
    for cfg in module.CONFIGS:
        _run(atlas, report, "parquet_configs", f"{DATA_DIR}/{cfg.name}",
             lambda a, f, cfg=cfg: _check_config(a, module, cfg, f in [f"{DATA_DIR}/{n}" for n in on_disk]))


def _check_config(atlas: _Atlas, module, cfg, exported: bool) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not atlas.has(cfg.source):
        if exported:
            raise _Skip(f"its source {cfg.source} is absent")
        raise _Skip(f"not exported; its source {cfg.source} is absent")
    if not exported:
        return [f"config missing from {DATA_DIR}/ although its source {cfg.source} is present"]
    inputs = [cfg.source]
    if cfg.family == "checker_masks" and atlas.has(layout.CHECKER_ACTIVATIONS):
        inputs.append(layout.CHECKER_ACTIVATIONS)       # its n_prompts column comes from there
    atlas.need(*inputs)
    files = sorted((atlas.root / DATA_DIR / cfg.name).glob("*.parquet"))
    if not files:
        return [f"no parquet files in {DATA_DIR}/{cfg.name}"]
    stored = pa.concat_tables([pq.read_table(p) for p in files])
    rows = list(module.ROW_GENERATORS[cfg.family](atlas.path(cfg.source), cfg))
    schema = stored.schema
    if [f.name for f in schema] != list(rows[0].keys() if rows else schema.names):
        return [f"columns {schema.names} vs {list(rows[0].keys())} generated from {cfg.source}"]
    expected = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    if stored.num_rows != expected.num_rows:
        return [f"{stored.num_rows} rows vs {expected.num_rows} generated from {cfg.source}"]
    problems = []
    for col in schema.names:
        a, b = stored.column(col), expected.column(col)
        if a.equals(b):
            continue
        av, bv = a.to_pylist(), b.to_pylist()
        idx = [i for i, (x, y) in enumerate(zip(av, bv)) if x != y]
        first = idx[0]
        key_cols = [k for k in ("concept", "pair", "object", "target", "layer", "ast_node", "builtin_obj",
                                "variation_id", "epsilon", "consistency") if k in schema.names][:3]
        ident = ", ".join(f"{k}={stored.column(k)[first].as_py()}" for k in key_cols)
        problems.append(f"column {col!r}: {len(idx)} row(s) differ from {cfg.source}; first row {first} "
                        f"({ident}): parquet {_short(av[first])}, source {_short(bv[first])}")
        if len(problems) >= MAX_DIFFS:
            break
    return problems


def _short(v) -> str:
    if isinstance(v, list):
        return f"[{len(v)} values: {v[:6]}{'…' if len(v) > 6 else ''}]"
    return repr(v)
