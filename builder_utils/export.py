"""The Hub export: a raw release folder -> a folder that `load_dataset` and the Hub viewer read.

    out_dir/
      README.md                              dataset card: YAML `configs:` + `dataset_info`, then prose
      data/<config>/train-0000i-of-0000N.parquet
      13_object_masks_eps0.5_cons0.8.h5 ...  the raw release files (hard links, else copies), so
                                             `hf_hub_download(filename=...)` keeps working; not in `configs:`
      atlas_manifest.json                    provenance, when the raw folder has one

Every config is written by the `CSP-Atlas.py` builder (`download_and_prepare(file_format="parquet")`),
so the rows `load_dataset` returns are exactly the rows the builder makes. Every config is
parquet — CSV tables included — because datasets picks ONE loader module per repo (from the
first config). There is never a `.py` at the root: a script named after the folder makes
`load_dataset` refuse the whole folder (HF_DATASETS.md §2).

Same input -> byte-identical parquet files and README (no timestamps, no absolute paths).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterable, Optional, Union

import datasets
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from builder_utils import layout, manifest

BUILDER_SCRIPT = Path(__file__).resolve().parents[1] / "CSP-Atlas.py"
DATASET_NAME = "csp_atlas"              # prefix datasets gives the shards; renamed away
SPLIT = "train"
DATA_DIR = "data"
DEFAULT_MAX_SHARD_SIZE = "500MB"        # datasets' own default (uncompressed Arrow bytes per shard)
# datasets writes snappy; zstd makes the mask configs about 45% smaller (benchmarks/bench_export.py).
PARQUET_COMPRESSION = "zstd"
STAGING = ".export-tmp"                 # inside out_dir, so the final renames stay on one filesystem
REPO_ID = "piotrwilam/CSP-Atlas"
PRETTY_NAME = "CSP-Atlas: Concept-Specific Neural Circuits in a Sparse Python Transformer"
TAGS = ["interpretability", "mechanistic-interpretability", "sparse-circuits", "circuits", "python", "code",
        "concepts", "neuron-masks"]
# Raw files carried over to the root, in pipeline order (the release plus the provenance files and the 5A activations).
RAW_FILES = layout.release_file_names(include_activations=True) + [layout.OBJECT_PROMPT_STATS,
                                                                 layout.TOKEN_CHECKER_ACTIVATIONS, layout.MANIFEST]


# ----------------------------------------------------------------------------- report


@dataclass
class ConfigExport:
    name: str
    source: str
    files: list[str]            # relative to out_dir
    num_rows: int
    parquet_bytes: int
    source_bytes: int
    seconds: float
    cpu_seconds: float


@dataclass
class ExportReport:
    out_dir: Path
    written: list[ConfigExport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)     # config -> why
    raw_files: list[str] = field(default_factory=list)
    card_configs: list[str] = field(default_factory=list)     # what README.md's `configs:` lists

    def format(self) -> str:
        lines = [f"Export in {self.out_dir}: {len(self.written)} config(s) written, {len(self.skipped)} skipped, "
                 f"{len(self.raw_files)} raw file(s) at the root, {len(self.card_configs)} config(s) in README.md"]
        if self.written:
            lines.append(f"  {'config':<36} {'rows':>9} {'parquet':>10} {'source':>10} {'ratio':>7} {'s':>6}")
        for c in self.written:
            ratio = c.source_bytes / c.parquet_bytes if c.parquet_bytes else float("nan")
            lines.append(f"  {c.name:<36} {c.num_rows:>9,} {_size(c.parquet_bytes):>10} {_size(c.source_bytes):>10} "
                         f"{ratio:>6.1f}x {c.seconds:>6.2f}")
        if self.written:
            parquet, seconds = sum(c.parquet_bytes for c in self.written), sum(c.seconds for c in self.written)
            lines.append(f"  {'total':<36} {sum(c.num_rows for c in self.written):>9,} {_size(parquet):>10} "
                         f"{'':>10} {'':>7} {seconds:>6.1f}")
        for name, why in self.skipped.items():
            lines.append(f"  skipped {name}: {why}")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# ----------------------------------------------------------------------------- the builder


def load_builder_module(path: Union[str, os.PathLike] = BUILDER_SCRIPT) -> ModuleType:
    """Import `CSP-Atlas.py` by path (its name is not a valid module name)."""
    path = Path(path)
    if not path.is_file():
        raise layout.AtlasFileError(path, "builder script not found")
    spec = importlib.util.spec_from_file_location("csp_atlas_builder", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # datasets re-imports a builder's module by name (streaming patches)
    spec.loader.exec_module(module)
    return module


def _select(registry: dict, names: Optional[Iterable[str]]) -> list:
    if names is None:
        return list(registry.values())
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown config name(s) {unknown}; available: {list(registry)}")
    return [registry[n] for n in names]


# ----------------------------------------------------------------------------- export


def export_hub(raw_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *,
               configs: Optional[Iterable[str]] = None,
               max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE) -> ExportReport:
    """Write `out_dir` (parquet configs, raw files, README.md) from the raw release folder `raw_dir`.

    `configs` restricts the export to those config names (others already in `out_dir` stay).
    A missing required source file raises `AtlasFileError` before anything is written; a
    missing optional one (activations, token-checker) skips its config and is reported.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise layout.AtlasFileError(raw_dir, "raw release folder not found")
    scripts = sorted(p.name for p in out_dir.glob("*.py")) if out_dir.is_dir() else []
    if scripts:
        raise layout.AtlasFileError(out_dir / scripts[0], "a .py file at the export root makes load_dataset refuse "
                                                          "the folder (dataset scripts are unsupported); remove it")
    module = load_builder_module()
    registry = {c.name: c for c in module.CONFIGS}
    report = ExportReport(out_dir)

    todo, missing = [], []
    for cfg in _select(registry, configs):
        if (raw_dir / cfg.source).is_file():
            todo.append(cfg)
        elif cfg.optional:
            report.skipped[cfg.name] = f"optional source {cfg.source} not in {raw_dir}"
        else:
            missing.append(cfg)
    if missing:
        others = sorted({c.source for c in missing} - {missing[0].source})
        raise layout.AtlasFileError(raw_dir / missing[0].source,
                                    f"file not found (required by config {missing[0].name!r})"
                                    + (f"; also missing: {others}" if others else ""))

    stage = out_dir / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    progress_bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()    # one bar over configs, not one per split
    try:
        for cfg in tqdm(todo, desc="Exporting configs", unit="config"):
            report.written.append(_export_config(module, cfg, raw_dir, out_dir, stage, max_shard_size))
        for name in report.skipped:     # a config whose optional source is gone must not linger from a past export
            stale = out_dir / DATA_DIR / name
            if stale.is_dir():
                shutil.rmtree(stale)
                report.skipped[name] += "; removed its stale export"
        report.raw_files = link_raw_files(raw_dir, out_dir)
        report.card_configs = write_card(out_dir, module)   # last: the card describes what is on disk
    finally:
        if progress_bars:
            datasets.enable_progress_bars()
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _export_config(module: ModuleType, cfg, raw_dir: Path, out_dir: Path, stage: Path,
                   max_shard_size: Union[int, str]) -> ConfigExport:
    """Build one config into the staging area, then swap it into `out_dir/data/<config>`."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    prepared = stage / cfg.name
    builder = module.CSPAtlas(config_name=cfg.name, data_dir=str(raw_dir), cache_dir=str(stage / "cache"),
                              dataset_name=DATASET_NAME)
    try:
        builder.download_and_prepare(output_dir=str(prepared), file_format="parquet", max_shard_size=max_shard_size)
    except datasets.exceptions.DatasetGenerationError as exc:
        # datasets wraps whatever the row generator raised; surface our error, which names the file.
        if isinstance(exc.__cause__, layout.AtlasFileError):
            raise exc.__cause__ from None
        raise
    # datasets names shards `csp_atlas-train-00000-of-00002.parquet`, or `csp_atlas-train.parquet` if only one.
    shards = sorted(prepared.glob(f"{DATASET_NAME}-{SPLIT}*.parquet"))
    final = stage / f"{cfg.name}.final"
    final.mkdir()
    for i, shard in enumerate(shards):
        recompress(shard, final / f"{SPLIT}-{i:05d}-of-{len(shards):05d}.parquet")
    dest = out_dir / DATA_DIR / cfg.name
    _replace_dir(final, dest)
    shutil.rmtree(prepared)
    files = sorted(dest.iterdir())
    return ConfigExport(cfg.name, cfg.source, [p.relative_to(out_dir).as_posix() for p in files],
                        builder.info.splits[SPLIT].num_examples, sum(p.stat().st_size for p in files),
                        (raw_dir / cfg.source).stat().st_size, time.perf_counter() - t0, time.process_time() - cpu0)


def recompress(src: Path, dst: Path) -> None:
    """Copy a parquet file as zstd: same schema (with its features metadata), row groups and page index.

    Content-defined chunking (datasets' default, for deduplication on the Hub) is dropped: its small
    pages cost a third more bytes on the mask configs, and an unchanged export re-uploads nothing anyway.
    """
    source = pq.ParquetFile(src)
    with pq.ParquetWriter(dst, source.schema_arrow, compression=PARQUET_COMPRESSION, write_page_index=True) as writer:
        for i in range(source.num_row_groups):
            writer.write_table(source.read_row_group(i))
    os.remove(src)


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest`; a reader sees the old or the new config, never a mix."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def link_raw_files(raw_dir: Path, out_dir: Path) -> list[str]:
    """Mirror the raw release files into `out_dir` under their release names: hard links, else copies."""
    names = [n for n in RAW_FILES if (raw_dir / n).is_file()]
    for name in set(RAW_FILES) - set(names):       # gone from the raw folder: not part of this release
        (out_dir / name).unlink(missing_ok=True)
    for name in names:
        src, dst = raw_dir / name, out_dir / name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        with layout.atomic_output(dst) as tmp:
            try:
                os.link(src, tmp)
            except OSError:     # another filesystem, or links not allowed
                shutil.copyfile(src, tmp)
    return names


# ----------------------------------------------------------------------------- the dataset card


@dataclass
class _CardConfig:
    cfg: object                 # the builder's CSPAtlasConfig
    features: datasets.Features
    num_rows: int
    num_bytes: int              # Arrow bytes, as push_to_hub records them
    parquet_bytes: int


def _configs_on_disk(out_dir: Path, module: ModuleType) -> list[_CardConfig]:
    """Registry configs that have parquet under data/, default first, then registry order."""
    found = []
    for cfg in module.CONFIGS:
        files = sorted((out_dir / DATA_DIR / cfg.name).glob(f"{SPLIT}-*.parquet"))
        if not files:
            continue
        features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
        tables = [pq.read_table(f) for f in files]
        found.append(_CardConfig(cfg, features, sum(t.num_rows for t in tables), sum(t.nbytes for t in tables),
                                 sum(f.stat().st_size for f in files)))
    found.sort(key=lambda c: c.cfg.name != module.DEFAULT_CONFIG)
    return found


def write_card(out_dir: Path, module: ModuleType) -> list[str]:
    """Write `out_dir/README.md` for the configs found on disk; returns their names (card order)."""
    found = _configs_on_disk(out_dir, module)
    record = manifest.read_manifest(out_dir) if (out_dir / layout.MANIFEST).is_file() else None
    raw_files = [n for n in RAW_FILES if (out_dir / n).is_file()]
    text = render_card(found, module, record, {n: (out_dir / n).stat().st_size for n in raw_files})
    with layout.atomic_output(out_dir / "README.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return [c.cfg.name for c in found]


def card_metadata(found: list[_CardConfig], module: ModuleType) -> dict:
    """The YAML front matter: licence, tags, `configs:` and `dataset_info` per config."""
    largest = max((c.num_rows for c in found), default=0)
    meta = {
        "license": "apache-2.0",
        "pretty_name": PRETTY_NAME,
        "tags": TAGS,
        "size_categories": [_size_category(largest)],
        "configs": [],
        "dataset_info": [],
    }
    for c in found:
        entry = {"config_name": c.cfg.name,
                 "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{c.cfg.name}/{SPLIT}-*.parquet"}]}
        if c.cfg.name == module.DEFAULT_CONFIG:
            entry["default"] = True
        meta["configs"].append(entry)
        meta["dataset_info"].append({"config_name": c.cfg.name, "features": c.features._to_yaml_list(),
                                     "splits": [{"name": SPLIT, "num_bytes": c.num_bytes,
                                                 "num_examples": c.num_rows}],
                                     "download_size": c.parquet_bytes, "dataset_size": c.num_bytes})
    return meta


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


# What each column means, for the schema tables (one per family).
COLUMN_DOCS = {
    "concept": "concept key: `ast__<Node>` or `builtin__<name>` (`builtin___isolated_` is the sentinel)",
    "concept_type": "`ast` or `builtin`",
    "name": "the concept without its type prefix (`For`, `len`)",
    "pair": "pair key `<AstNode>__<builtin>` (`For__list`, `Assert___isolated_`)",
    "ast_node": "AST node type of the pair", "builtin_obj": "builtin of the pair (`_isolated_`: none)",
    "object": "concept key (`ast__Break`, `builtin__len`)",
    "keyword": "the bare token the checker prompts contain (null: tokenless concept)",
    "layer": "transformer layer, 0-based",
    "epsilon": "ε: mean |activation| must exceed it", "consistency": "C: firing rate must reach it",
    "n_active": "number of active channels (= len(active_idx) = sum(mask))",
    "active_idx": "sorted indices of the active channels",
    "mask": "the mask, one bool per MLP-output channel (width from the data)",
    "n_prompts": "prompts behind the mask / sums (null where the release does not record it)",
    "activation_sum": "Σ over prompts of |MLP output| at the last token, per channel",
    "firing_count": "number of prompts where the channel's output is non-zero",
    "variation_id": "index of the prompt within its unit", "prompt_text": "the Python snippet",
    "sequence_loss": "model's mean per-token loss on the snippet", "token_length": "tokens in the snippet",
    "ast_verified": "`ast.parse` finds the target node",
    "target": "concept key", "concept_only": "|A \\ B|: universal-only channels",
    "shared": "|A ∩ B|: channels in both the universal and the checker mask",
    "token_only": "|B \\ A|: checker-only channels",
    "concept_fraction": "concept-only share of the universal mask, rounded to 4 dp (0 when it is empty)",
    "token_fraction": "shared share of the universal mask, rounded to 4 dp (0 when it is empty)",
    "type": "`ast` or `builtin`", "status": "`no_keyword`",
    "p_trim": "trim level p", "observed_trimmed_jaccard": "trimmed mean Jaccard to the other concepts",
    "percentile": "population percentile of that mean", "significant": "percentile < 0.05",
    "A_size": "|A| (universal mask)", "B_size": "|B| (token-checker mask)", "A_and_B": "|A ∩ B|",
    "A_only": "|A \\ B|", "B_only": "|B \\ A|",
    "n_testable": "concepts compared (keyword concepts with both a universal and a checker mask)",
    "n_ast": "of which AST nodes", "n_builtin": "of which builtins",
    "mean_concept_fraction": "mean of `concept_fraction` over all (concept, layer) rows",
    "mean_token_fraction": "mean of `token_fraction` over all (concept, layer) rows",
    "ast_concept_fraction": "the same over the AST concepts' rows (null if none)",
    "ast_token_fraction": "the same over the AST concepts' rows (null if none)",
    "blt_concept_fraction": "the same over the builtin concepts' rows (null if none)",
    "blt_token_fraction": "the same over the builtin concepts' rows (null if none)",
    "mean_A_size": "mean universal-mask size over the rows", "mean_B_size": "mean checker-mask size over the rows",
}
# One schema table per family, in card order.
FAMILY_TITLES = {
    "masks": "`masks_eps{ε}_cons{C}` — universal concept masks (9 configs)",
    "pair_masks": "`pair_masks_eps{ε}_cons{C}` — pair masks (9 configs)",
    "checker_masks": "`checker_masks_eps{ε}_cons{C}` (9 configs) and `token_checker_masks`",
    "object_activations": "`object_activations`", "checker_activations": "`checker_activations`",
    "object_prompts": "`object_prompts`", "checker_prompts": "`checker_prompts` and `token_checker_prompts`",
    "summary": "`summary`", "target_checker": "`target_checker_eps{ε}_cons{C}` (9 configs)",
    "modularity_scores": "`modularity_scores`", "modularity_detail": "`modularity_detail`",
    "token_independence_summary": "`token_independence_summary`",
    "token_independence_detail": "`token_independence_detail`",
    "token_independence_no_keyword": "`token_independence_no_keyword`",
}
_SAME_SCHEMA = {"token_checker_masks": "checker_masks", "token_checker_prompts": "checker_prompts"}


def _type_name(feature) -> str:
    if isinstance(feature, datasets.List):
        inner = _type_name(feature.feature)
        return f"list<{inner}>[{feature.length}]" if feature.length not in (None, -1) else f"list<{inner}>"
    return getattr(feature, "dtype", type(feature).__name__)


def _column_doc(name: str) -> str:
    if name.startswith("p="):
        return f"layers (0–8) where the concept is significant at trim level {name[2:]}"
    return COLUMN_DOCS.get(name, "").replace("|", "\\|")     # a bare | would end the table cell


def render_card(found: list[_CardConfig], module: ModuleType, record: Optional[dict],
                raw_sizes: dict[str, int]) -> str:
    meta = yaml.safe_dump(card_metadata(found, module), sort_keys=False, allow_unicode=True, width=1000)
    default = module.DEFAULT_CONFIG
    out = [f"---\n{meta}---\n", f"# {PRETTY_NAME}\n", _INTRO.format(default=default, repo=REPO_ID)]

    out.append("## Configs\n\nOne `train` split each; every config is parquet under `data/<config>/`.\n")
    out.append("| config | rows | built from |\n|---|---:|---|")
    for c in found:
        mark = " (default)" if c.cfg.name == default else ""
        out.append(f"| `{c.cfg.name}`{mark} | {c.num_rows:,} | `{c.cfg.source}` |")
    out.append("")

    out.append("## Schemas\n")
    seen = set()
    for c in found:
        family = _SAME_SCHEMA.get(c.cfg.family, c.cfg.family)
        if family in seen:
            continue
        seen.add(family)
        out.append(f"### {FAMILY_TITLES.get(family, family)}\n\n{c.cfg.description}\n")
        out.append("| column | type | meaning |\n|---|---|---|")
        for name, feature in c.features.items():
            out.append(f"| `{name}` | `{_type_name(feature)}` | {_column_doc(name)} |")
        out.append("")

    out.append(_LAYOUT)
    if raw_sizes:
        out.append("| file | size |\n|---|---:|")
        out += [f"| `{n}` | {_size(s)} |" for n, s in raw_sizes.items()]
        out.append("")
    out.append(_provenance(record))
    out.append(_WHY_PARQUET)
    out.append(f"## Citation\n\n```bibtex\n{module._CITATION.strip()}\n```\n")
    out.append(_LICENSE_TEXT)
    return "\n".join(out)


def _provenance(record: Optional[dict]) -> str:
    lines = ["## Provenance\n",
             "The rows are produced by the `CSP-Atlas.py` builder of the code repository, run by "
             "`scripts/export_hub.py RAW_DIR OUT_DIR` over the raw release folder."]
    if record is None:
        lines.append("No `atlas_manifest.json` was found with the raw files, so this export records no "
                     "build provenance.\n")
        return "\n".join(lines)
    build = record.get("build", {})
    model = build.get("model", {})
    if model.get("source") == "hub":
        lines.append(f"\n- Model: `{model.get('id')}` (revision `{model.get('revision', 'unknown')}`)")
    elif model:
        lines.append(f"\n- Model: a local model folder `{model.get('path')}` "
                     f"(weights sha256 `{model.get('weights_sha256')}`)")
    if build.get("code_commit"):
        lines.append(f"- Code commit: `{build['code_commit']}`")
    if isinstance(build.get("preset"), dict) and build["preset"].get("name"):
        lines.append(f"- Build preset: `{build['preset']['name']}`")
    packages = build.get("packages") or {}
    if packages:
        lines.append("- Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
    lines.append(f"- Every raw file's size, sha256, stage and parameters: `{layout.MANIFEST}` (in this folder).\n")
    return "\n".join(lines)


_INTRO = """\
Frozen artefacts of the paper *CSP-Atlas: Concept-Specific Neural Circuits in a Sparse Python Transformer*
(Wilam, 2026): which MLP-output channels of the sparse Python transformer `openai/circuit-sparsity` respond to
each of 106 Python concepts (43 AST node types + 63 builtins), layer by layer. Masks are binarised from the
activations over many prompts at 9 settings — ε ∈ {{0.001, 0.1, 0.5}} (mean |activation| must exceed ε) ×
C ∈ {{0.2, 0.5, 0.8}} (firing rate must reach C) — then marginalised over the (AST node, builtin) prompt pairs
into universal concept masks, and compared with "checker" masks of prompts that contain a concept's keyword but
not the concept.

Every artefact is a row-wise config here, one row per natural unit (concept × layer, pair × layer, prompt, table
row). The original nested HDF5 files and CSV tables sit next to them under their release names.

## Quick start

```python
from datasets import load_dataset

masks = load_dataset("{repo}", "{default}", split="train")      # the default config
row = masks[0]            # concept, concept_type, name, layer, epsilon, consistency, n_active, active_idx, mask
pairs = load_dataset("{repo}", "pair_masks_eps0.5_cons0.8", split="train")
prompts = load_dataset("{repo}", "object_prompts", split="train")

import numpy as np
stack = np.array(masks.with_format("numpy")["mask"])           # (concepts × layers, width) bool
```

The raw release files stay downloadable under their release names:

```python
from huggingface_hub import hf_hub_download
path = hf_hub_download(repo_id="{repo}", filename="13_object_masks_eps0.5_cons0.8.h5", repo_type="dataset")
```
"""

_LAYOUT = """\
## Layout

```
README.md                                   this card (YAML `configs:` + `dataset_info`)
data/<config>/train-0000i-of-0000N.parquet  the configs above
11A_object_prompts.parquet ...              raw release files (not configs), for hf_hub_download
13_object_masks_eps0.5_cons0.8.h5 ...       layer-major HDF5: /universal_masks/layer_L/<concept>,
                                            /pair_masks/layer_L/<pair>, /metadata, /metrics
atlas_manifest.json                         provenance of the raw files (when present)
```

Raw files in this folder:
"""

_WHY_PARQUET = """\
## Why parquet configs and not the HDF5 files

The `datasets` HDF5 loader treats the first axis of every dataset as rows. The release's files are nested,
layer-major groups of vectors with scalar counts (`/n_prompts/<pair>`), so the loader fails on the activation
files ("Illegal slicing argument for scalar dataspace") and loads the mask files silently wrong (one row per
AST node, every mask cut to that many bits). Dataset scripts are no longer supported by `datasets` (≥ 4.0), and
`datasets` picks one loader for all configs of a repository, so every config here is parquet and no `.py` file
sits at the root.
"""

_LICENSE_TEXT = """\
## License

Apache-2.0. The model `openai/circuit-sparsity` is distributed under its own licence on its own Hub repository
and is not redistributed here.
"""
