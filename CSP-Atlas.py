"""CSP-Atlas as row-wise `datasets` configs, built from a raw release folder.

The release keeps its masks and activations in nested, layer-major HDF5 files
(`/universal_masks/layer_3/ast__For`, a scalar `/n_prompts/For__list`, ...) and its
analyses in CSV tables. Neither loads usefully with `load_dataset` (the `hdf5` loader
fails on the scalars and cuts every mask to the length of the first dataset it meets),
so this builder turns every file into long rows — one per natural unit — that the
export (`builder_utils/export.py`) writes as parquet configs plus a dataset card.

Use it directly (scripts are not loadable through `load_dataset` since datasets 4.0;
that is also why the published folder never has this file at its root):

    from builder_utils.export import load_builder_module   # imports this file by path
    module = load_builder_module()
    builder = module.CSPAtlas(config_name="masks_eps0.5_cons0.8", data_dir="build/raw", cache_dir="/tmp/c")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")

(By hand: `importlib.util.spec_from_file_location`, and register the module in `sys.modules`
before executing it — datasets re-imports a builder's module by name.) Every config reads
exactly one release file (`config.source`, relative to `data_dir`), except the checker mask
configs, which also take `n_prompts` from `12_checker_activations.h5` when it is there.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import datasets
import h5py
import numpy as np

try:
    from builder_utils import concepts, decomposition, layout
except ImportError:  # a plain clone that was never `pip install -e`d: the package sits next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from builder_utils import concepts, decomposition, layout

_HOMEPAGE = "https://github.com/piotrwilam/AtlasCSP"
_LICENSE = "apache-2.0"
_CITATION = """\
@article{Wilam2026CSPAtlas,
  title   = {CSP-Atlas: Concept-Specific Neural Circuits in a Sparse Python Transformer},
  author  = {Wilam, Piotr},
  year    = {2026},
  url     = {https://github.com/piotrwilam/AtlasCSP}
}
"""
_DESCRIPTION = ("Prompts, MLP-output activations, binarised concept masks and their decompositions for 106 "
                "Python concepts (43 AST node types + 63 builtins) in openai/circuit-sparsity.")

DEFAULT_CONFIG = "masks_eps0.5_cons0.8"
MODULARITY_TRIMS = (0.0, 0.05, 0.1, 0.25)   # the `p=...` score columns of relaxed_modularity_scores.csv

# ----------------------------------------------------------------------------- the registry


@dataclass
class CSPAtlasConfig(datasets.BuilderConfig):
    """One row-wise view of one release file."""

    family: str = ""                      # picks the row generator and the schema
    source: str = ""                      # the release file the rows come from, relative to data_dir
    epsilon: Optional[float] = None       # the (ε, C) cell of the per-setting families
    consistency: Optional[float] = None
    optional: bool = False                # the export skips the config when `source` is absent


def _per_setting(family: str, file_name, description: str, optional: bool = False) -> list[CSPAtlasConfig]:
    return [CSPAtlasConfig(name=f"{family}_{layout.setting_tag(e, c)}", family=family, source=file_name(e, c),
                           epsilon=e, consistency=c, optional=optional, description=description + ".")
            for e, c in layout.SETTINGS]


def _single(name: str, source: str, description: str, optional: bool = False) -> CSPAtlasConfig:
    return CSPAtlasConfig(name=name, family=name, source=source, optional=optional, description=description)


CONFIGS: list[CSPAtlasConfig] = [
    *_per_setting("masks", layout.object_masks_name,
                  "Universal (marginalised) concept masks, one row per concept and layer"),
    *_per_setting("pair_masks", layout.object_masks_name,
                  "Masks of the (AST node, builtin) prompt pairs, one row per pair and layer"),
    *_per_setting("checker_masks", layout.checker_masks_name,
                  "Checker masks (keyword present, concept absent), one row per concept and layer"),
    _single("token_checker_masks", layout.TOKEN_CHECKER_MASKS,
            "Token-checker masks of the broader 5A prompt set, one row per concept and layer.", optional=True),
    _single("object_activations", layout.OBJECT_ACTIVATIONS,
            "Σ|MLP output| and firing counts over the object prompts, one row per pair and layer.", optional=True),
    _single("checker_activations", layout.CHECKER_ACTIVATIONS,
            "Σ|MLP output| and firing counts over the checker prompts, one row per concept and layer.",
            optional=True),
    _single("object_prompts", layout.OBJECT_PROMPTS, "The object prompts: (AST node × builtin) × variations."),
    _single("checker_prompts", layout.CHECKER_PROMPTS, "The checker prompts: keyword present, concept absent."),
    _single("token_checker_prompts", layout.TOKEN_CHECKER_PROMPTS,
            "The token-checker prompts (5A): every keyword context.", optional=True),
    _single("summary", layout.SUMMARY, "Global concept/token fractions, one row per (ε, C) setting."),
    *_per_setting("target_checker", layout.target_checker_name,
                  "Universal-vs-checker decomposition, one row per testable concept and layer"),
    _single("modularity_scores", layout.MODULARITY_SCORES,
            "Relaxed modularity: significant-layer count per concept and trim level p."),
    _single("modularity_detail", layout.MODULARITY_DETAIL,
            "Relaxed modularity: trimmed Jaccard and percentile per concept, layer and trim level."),
    _single("token_independence_summary", layout.TOKEN_INDEPENDENCE_SUMMARY,
            "Token independence (5B), per concept, averaged over layers.", optional=True),
    _single("token_independence_detail", layout.TOKEN_INDEPENDENCE_DETAIL,
            "Token independence (5B), per concept and layer.", optional=True),
    _single("token_independence_no_keyword", layout.TOKEN_INDEPENDENCE_NO_KEYWORD,
            "The tokenless concepts, to which no checker confound applies.", optional=True),
]

# ----------------------------------------------------------------------------- schemas

_str, _i8, _i16, _i32, _i64, _f32, _f64, _bool = (datasets.Value(t) for t in (
    "string", "int8", "int16", "int32", "int64", "float32", "float64", "bool"))


def _vector(value: datasets.Value, width: Optional[int]) -> datasets.List:
    # Fixed length where the width is known (it is, whenever data_dir is set): the card then states it.
    return datasets.List(value, length=width) if width else datasets.List(value)


def _mask_columns(width: Optional[int]) -> dict:
    return {"layer": _i8, "epsilon": _f64, "consistency": _f64, "n_active": _i32,
            "active_idx": datasets.List(_i16), "mask": _vector(_bool, width)}


def _activation_columns(width: Optional[int]) -> dict:
    return {"layer": _i8, "n_prompts": _i32,
            "activation_sum": _vector(_f32, width), "firing_count": _vector(_i32, width)}


_PAIR_KEYS = {"pair": _str, "ast_node": _str, "builtin_obj": _str}
_CHECKER_KEYS = {"object": _str, "concept_type": _str, "keyword": _str}

TABLE_FEATURES: dict[str, dict] = {
    "object_prompts": {"ast_node": _str, "builtin_obj": _str, "variation_id": _i64, "prompt_text": _str,
                       "sequence_loss": _f64, "token_length": _i64, "ast_verified": _bool},
    "checker_prompts": {"object": _str, "keyword": _str, "variation_id": _i64, "prompt_text": _str},
    "token_checker_prompts": {"object": _str, "keyword": _str, "variation_id": _i64, "prompt_text": _str},
    "summary": {"epsilon": _f64, "consistency": _f64, "n_testable": _i32, "n_ast": _i32, "n_builtin": _i32,
                **{c: _f64 for c in layout.SUMMARY_COLUMNS[5:]}},
    "target_checker": {"target": _str, "concept_type": _str, "layer": _i8, "concept_only": _i32,
                       "shared": _i32, "token_only": _i32, "concept_fraction": _f64},
    "modularity_scores": {"object": _str, "type": _str, **{f"p={p!r}": _i8 for p in MODULARITY_TRIMS}},
    "modularity_detail": {"object": _str, "type": _str, "layer": _i8, "p_trim": _f64,
                          "observed_trimmed_jaccard": _f64, "percentile": _f64, "significant": _bool},
    "token_independence_summary": {"object": _str, "type": _str, "keyword": _str, "concept_fraction": _f64,
                                   "token_fraction": _f64, "A_size": _f64, "A_and_B": _f64, "A_only": _f64,
                                   "B_only": _f64},
    "token_independence_detail": {"object": _str, "type": _str, "keyword": _str, "layer": _i8, "A_size": _i32,
                                  "B_size": _i32, "A_only": _i32, "A_and_B": _i32, "B_only": _i32,
                                  "token_fraction": _f64, "concept_fraction": _f64},
    "token_independence_no_keyword": {"object": _str, "status": _str},
}


def features_for(family: str, width: Optional[int] = None) -> datasets.Features:
    """The declared schema of a config family; `width` is the data's mask/activation width."""
    if family == "masks":
        cols = {"concept": _str, "concept_type": _str, "name": _str, **_mask_columns(width)}
    elif family == "pair_masks":
        cols = {**_PAIR_KEYS, **_mask_columns(width)}
    elif family in ("checker_masks", "token_checker_masks"):
        cols = {**_CHECKER_KEYS, **_mask_columns(width), "n_prompts": _i32}
    elif family == "object_activations":
        cols = {**_PAIR_KEYS, **_activation_columns(width)}
    elif family == "checker_activations":
        cols = {**_CHECKER_KEYS, **_activation_columns(width)}
    elif family in TABLE_FEATURES:
        cols = TABLE_FEATURES[family]
    else:
        raise ValueError(f"unknown config family {family!r}")
    return datasets.Features(cols)


# HDF5 group whose vectors set the width of a family's `mask` / `activation_sum` columns.
_WIDTH_GROUP = {"masks": layout.G_UNIVERSAL, "pair_masks": layout.G_PAIR, "checker_masks": layout.G_CHECKER,
                "token_checker_masks": layout.G_CHECKER, "object_activations": layout.G_ACTIVATIONS,
                "checker_activations": layout.G_ACTIVATIONS}


def read_width(path: Path, group: str) -> int:
    """Length of the vectors under `/group/layer_0/` — the data's width, read without loading the file."""
    with layout.open_h5(path) as f:
        layer0 = f.get(f"{group}/layer_0")
        if not isinstance(layer0, h5py.Group) or not len(layer0):
            raise layout.AtlasFileError(path, f"no vectors under /{group}/layer_0")
        first = layer0[next(iter(layer0))]
        if not isinstance(first, h5py.Dataset) or first.ndim != 1:
            raise layout.AtlasFileError(path, f"{first.name} is not a vector")
        if first.shape[0] > np.iinfo(np.int16).max:     # `active_idx` is int16
            raise layout.AtlasFileError(path, f"width {first.shape[0]} does not fit the int16 active_idx column")
        return int(first.shape[0])


def read_n_prompts(path: Path) -> dict[str, int]:
    """The scalar `/n_prompts/<key>` datasets of an activations file, without reading the vectors."""
    with layout.open_h5(path) as f:
        group = f.get(layout.G_NPROMPTS)
        if not isinstance(group, h5py.Group):
            raise layout.AtlasFileError(path, f"missing group /{layout.G_NPROMPTS}")
        return {key: int(group[key][()]) for key in group}


# ----------------------------------------------------------------------------- rows


def _mask_fields(mask: np.ndarray, layer: int, epsilon: float, consistency: float) -> dict:
    # Lists, not arrays: datasets encodes Python lists about twice as fast as numpy rows.
    active = np.flatnonzero(mask)
    return {"layer": layer, "epsilon": epsilon, "consistency": consistency, "n_active": len(active),
            "active_idx": active.astype(np.int16).tolist(), "mask": mask.tolist()}


def _check_setting(path: Path, epsilon: float, consistency: float, cfg: CSPAtlasConfig) -> None:
    if cfg.epsilon is not None and (epsilon, consistency) != (cfg.epsilon, cfg.consistency):
        raise layout.AtlasFileError(path, f"/metadata says ε = {epsilon}, C = {consistency}, but config "
                                          f"{cfg.name!r} expects ε = {cfg.epsilon}, C = {cfg.consistency}")


def _keyword(concept: str) -> Optional[str]:
    return concepts.KEYWORD_MAP.get(concept, {}).get("keyword")


def universal_mask_rows(path: Path, cfg: CSPAtlasConfig) -> Iterator[dict]:
    om = layout.read_object_masks(path, pairs=False)
    _check_setting(path, om.epsilon, om.consistency, cfg)
    stack = om.universals
    for i, key in enumerate(stack.keys):
        kind, name = concepts.split_concept_key(key)
        for l in range(stack.n_layers):
            yield {"concept": key, "concept_type": kind, "name": name,
                   **_mask_fields(stack.masks[i, l], l, om.epsilon, om.consistency)}


def pair_mask_rows(path: Path, cfg: CSPAtlasConfig) -> Iterator[dict]:
    om = layout.read_object_masks(path, pairs=True)
    _check_setting(path, om.epsilon, om.consistency, cfg)
    stack = om.pairs
    for i, key in enumerate(stack.keys):
        ast_node, builtin = concepts.split_pair_key(key)
        for l in range(stack.n_layers):
            yield {"pair": key, "ast_node": ast_node, "builtin_obj": builtin,
                   **_mask_fields(stack.masks[i, l], l, om.epsilon, om.consistency)}


def checker_mask_rows(path: Path, cfg: CSPAtlasConfig) -> Iterator[dict]:
    cm = layout.read_checker_masks(path)
    _check_setting(path, cm.epsilon, cm.consistency, cfg)
    if cm.generation_stats is not None:            # token_checker_masks.h5 records its prompt counts
        n_prompts = cm.generation_stats
    else:                                          # 13_checker_masks_*: counts live in the activations file
        acts_path = path.parent / layout.CHECKER_ACTIVATIONS
        n_prompts = read_n_prompts(acts_path) if acts_path.is_file() else {}
    stack = cm.masks
    for i, key in enumerate(stack.keys):
        kind = concepts.concept_type(key)
        for l in range(stack.n_layers):
            yield {"object": key, "concept_type": kind, "keyword": _keyword(key),
                   **_mask_fields(stack.masks[i, l], l, cm.epsilon, cm.consistency),
                   "n_prompts": n_prompts.get(key)}


def activation_rows(path: Path, cfg: CSPAtlasConfig) -> Iterator[dict]:
    acts = layout.read_activations(path)
    for i, key in enumerate(acts.keys):
        if cfg.family == "object_activations":
            ast_node, builtin = concepts.split_pair_key(key)
            unit = {"pair": key, "ast_node": ast_node, "builtin_obj": builtin}
        else:
            unit = {"object": key, "concept_type": concepts.concept_type(key), "keyword": _keyword(key)}
        for l in range(acts.n_layers):
            yield {**unit, "layer": l, "n_prompts": int(acts.n_prompts[i]),
                   "activation_sum": acts.activation_sum[i, l].tolist(),
                   "firing_count": acts.firing_count[i, l].tolist()}


def target_checker_rows(path: Path, cfg: CSPAtlasConfig) -> Iterator[dict]:
    rows = decomposition.rows_from_counts(layout.read_target_checker(path))
    for r in rows.itertuples(index=False):
        yield {"target": r.target, "concept_type": r.concept_type, "layer": r.layer,
               "concept_only": r.concept_only, "shared": r.shared, "token_only": r.token_only,
               "concept_fraction": r.concept_fraction}


def table_rows(path: Path, cfg: CSPAtlasConfig) -> Iterator[dict]:
    """Parquet/CSV tables: the declared columns, in declared order; empty cells become nulls."""
    columns = list(TABLE_FEATURES[cfg.family])
    if cfg.family == "modularity_scores":          # its index (the concept) is an unnamed first column
        df = layout.read_table(path, required=columns[1:], index_col=0)
        df = df.rename_axis("object").reset_index()
    else:
        df = layout.read_table(path, required=columns)
    df = df[columns].astype(object).where(df[columns].notna(), None)
    for row in df.itertuples(index=False, name=None):
        yield dict(zip(columns, row))


ROW_GENERATORS = {
    "masks": universal_mask_rows, "pair_masks": pair_mask_rows,
    "checker_masks": checker_mask_rows, "token_checker_masks": checker_mask_rows,
    "object_activations": activation_rows, "checker_activations": activation_rows,
    "target_checker": target_checker_rows,
    **{family: table_rows for family in TABLE_FEATURES if family != "target_checker"},
}

# ----------------------------------------------------------------------------- the builder


class CSPAtlas(datasets.GeneratorBasedBuilder):
    """CSP-Atlas release files -> one `train` split of long rows per config (see `CONFIGS`)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = CSPAtlasConfig
    BUILDER_CONFIGS = CONFIGS
    DEFAULT_CONFIG_NAME = DEFAULT_CONFIG

    def _source_path(self) -> Optional[Path]:
        return Path(self.config.data_dir) / self.config.source if self.config.data_dir else None

    def _info(self) -> datasets.DatasetInfo:
        width = None
        path = self._source_path()
        if self.config.family in _WIDTH_GROUP and path is not None and path.is_file():
            width = read_width(path, _WIDTH_GROUP[self.config.family])
        return datasets.DatasetInfo(description=f"{_DESCRIPTION}\n\n{self.config.description}",
                                    features=features_for(self.config.family, width),
                                    homepage=_HOMEPAGE, license=_LICENSE, citation=_CITATION)

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        path = self._source_path()
        if path is None:
            raise ValueError(f"config {self.config.name!r}: CSP-Atlas builds from a raw release folder; "
                             f"pass data_dir=<folder holding {self.config.source}>")
        if not path.is_file():
            raise layout.AtlasFileError(path, f"file not found (the source of config {self.config.name!r})")
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"path": str(path)})]

    def _generate_examples(self, path: str):
        try:
            yield from enumerate(ROW_GENERATORS[self.config.family](Path(path), self.config))
        except layout.AtlasFileError:
            raise
        except (ValueError, KeyError) as exc:      # malformed content (a bad key, a missing group): name the file
            raise layout.AtlasFileError(path, f"cannot make the rows of config {self.config.name!r}: "
                                              f"{type(exc).__name__}: {exc}") from exc
