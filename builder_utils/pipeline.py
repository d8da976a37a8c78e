"""The whole build, 11 → 12 → 13 → 14 → analyses → export, with presets.

    tiny   a handful of concepts and variations on the mini model; seconds; what tests use
    mini   all 106 concepts / the 1,297-pair grid and the 58 keyword concepts, 4 variations, the mini model
    paper  openai/circuit-sparsity, 50 variations, the release's procedure (reference positions, fp16 on CUDA)

Every stage records a stamp (its parameters and the sha256 of its inputs) under
`raw/.stamps/`; a re-run skips a stage whose outputs exist and whose stamp still
matches, so an interrupted build resumes where it stopped. `force=True` rebuilds.
The stamps also feed the provenance manifest.

Folder layout under `out`:
    model/        the offline mini model (tiny/mini presets)
    raw/          the raw release files under their release names (+ stamps, checkpoints)
    CSP-Atlas/    the Hub-ready export: data/<config>/*.parquet, README.md, raw files at the root
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from builder_utils import layout
from builder_utils.concepts import ISOLATED, KEYWORD_MAP, concept_key

# --------------------------------------------------------------------------- presets

# The tiny preset: the six isolated AST nodes, four AST nodes with builtin partners, and six builtins.
TINY_AST = ("For", "If", "Call", "While", "Import", "ImportFrom", "Pass", "Break", "Continue", "Assert")
TINY_BUILTINS = ("list", "dict", "str", "range", "int", "len", ISOLATED)
MINI_MODEL_LABEL = "csp-atlas-mini-gpt2"   # the model_id recorded for the offline mini model


@dataclass(frozen=True)
class Preset:
    name: str
    model: str | None                 # Hub id or local path; None = build the offline mini model
    n_generate: int                   # candidate prompts per pair (the release: 50)
    n_keep: int                       # kept per pair after the loss filter (the release: 50)
    loss_threshold: float | str       # 3.0 for the paper's model; "drop_worst:K" for a random-init model
    checker_target: int               # checker prompts per keyword concept (the release: 50)
    position: str = "last"            # "last" (correct) or "reference" (the release's left-padding quirk)
    batch_size: int = 64
    device: str = "cpu"
    dtype: str = "float32"
    ast_nodes: tuple[str, ...] | None = None      # None = the whole grid
    builtins: tuple[str, ...] | None = None
    seed: int = 42
    model_seed: int = 0
    # "reference" sums trimmed means exactly as the release script did (float32 order effects included), to
    # regenerate its CSVs; "sorted" makes identical neighbour sets tie exactly.
    modularity_summation: str = "sorted"


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", None, n_generate=3, n_keep=3, loss_threshold="drop_worst:1", checker_target=10,
                   ast_nodes=TINY_AST, builtins=TINY_BUILTINS),
    # A random-init model scores every prompt near ln(2048) ≈ 7.6 nats, so the paper's 3.0 would drop all
    # pairs; dropping the 21 worst pairs keeps the filter exercised and gives the release's 1,276 pairs.
    "mini": Preset("mini", None, n_generate=4, n_keep=4, loss_threshold="drop_worst:21", checker_target=50),
    "paper": Preset("paper", "openai/circuit-sparsity", n_generate=50, n_keep=50, loss_threshold=3.0,
                    checker_target=50, position="reference", device="cuda", dtype="float16",
                    modularity_summation="reference"),
}


# --------------------------------------------------------------------------- stamps


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp_path(raw: Path, stage: str) -> Path:
    return raw / layout.STAMPS_DIR / f"{stage}.json"


def _fingerprint(raw: Path, inputs: list[str], params: dict) -> dict:
    # Through JSON and back, so it compares equal to the stored one (tuples become lists).
    return json.loads(json.dumps({"params": params, "inputs": {n: sha256_file(raw / n) for n in inputs}},
                                 sort_keys=True))


@dataclass
class StageRun:
    name: str
    outputs: list[str]
    skipped: bool
    seconds: float


@dataclass
class BuildResult:
    preset: str
    raw_dir: Path
    export_dir: Path
    stages: list[StageRun] = field(default_factory=list)


def run_stage(raw: Path, name: str, inputs: list[str], outputs: list[str], params: dict,
              fn: Callable[[], None], *, force: bool, log=print) -> StageRun:
    """Run `fn` unless its outputs exist and were made from the same inputs and parameters."""
    fp = _fingerprint(raw, inputs, params)
    stamp = _stamp_path(raw, name)
    current = (not force and stamp.is_file() and all((raw / o).is_file() for o in outputs)
               and json.loads(stamp.read_text())["fingerprint"] == fp)
    if current:
        log(f"[{name}] up to date, skipped")
        return StageRun(name, outputs, True, 0.0)
    log(f"[{name}] running")
    t0 = time.perf_counter()
    fn()
    missing = [o for o in outputs if not (raw / o).is_file()]
    if missing:
        raise RuntimeError(f"stage {name} finished without writing {missing}")
    with layout.atomic_output(stamp) as tmp:
        tmp.write_text(json.dumps({"stage": name, "outputs": outputs, "fingerprint": fp}, indent=2, sort_keys=True))
    return StageRun(name, outputs, False, time.perf_counter() - t0)


# --------------------------------------------------------------------------- the build


def build_atlas(preset: str | Preset, out: str | Path, *, force: bool = False, model: str | None = None,
                device: str | None = None, export: bool = True, writers: int = 1, log=print) -> BuildResult:
    """Build a complete atlas into `out` (see the module docstring for the layout).

    `writers` > 1 writes the stage-13 mask files from that many processes (spawned helpers: call
    it from a script with an `if __name__ == "__main__":` guard, as scripts/build_atlas.py does).
    """
    # Heavy imports live here so `--help` and the layout stay fast to import.
    from builder_utils import (activations, checker_prompts, decomposition, manifest, masks, models, modularity,
                               object_prompts, token_independence)

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    out = Path(out)
    raw, export_dir, model_dir = out / "raw", out / "CSP-Atlas", out / "model"
    # Check what can be checked before anything is written.
    if model is not None and models.is_local_source(model) and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"{model}: model folder not found")
    _make_output_folder(raw)
    layout.remove_stale_temporaries(raw)
    result = BuildResult(p.name, raw, export_dir)
    device = device or p.device
    model_ref = model or p.model

    # With the offline mini model, the tokenizer is trained on the 11A candidates and raw checker texts.
    matrix = object_prompts.build_concept_matrix()
    pairs = [(a, b) for a, b in matrix
             if (p.ast_nodes is None or a in p.ast_nodes) and (p.builtins is None or b in p.builtins)]
    checker_objects = sorted(k for k in KEYWORD_MAP if _in_preset(k, p))

    def tokenizer_corpus() -> list[str]:
        texts = list(object_prompts.release_candidates(matrix, seed=p.seed).prompt_text)
        for variant in ("11B", "5A"):
            texts += [c[3] for c in checker_prompts.raw_candidates(variant)]
        return texts

    if model_ref is None:
        run_stage(raw, "mini_model", [], [],
                  {"seed": p.model_seed, "corpus": "11A release stream + 11B/5A raw candidates", "text_seed": p.seed},
                  lambda: models.build_mini_model(model_dir, tokenizer_corpus(), seed=p.model_seed),
                  force=force or not (model_dir / "config.json").is_file(), log=log)
        model_ref = str(model_dir)

    mdl, tok = models.load_model_and_tokenizer(model_ref, device=device, dtype=p.dtype)
    model_label, weights = _model_identity(model_ref, model_dir)
    model_params = {"model": model_label, "weights_sha256": weights}

    result.stages.append(run_stage(
        raw, "11A_object_prompts", [], [layout.OBJECT_PROMPTS, layout.OBJECT_PROMPT_STATS],
        {**model_params, "pairs": len(pairs), "n_generate": p.n_generate, "n_keep": p.n_keep,
         "loss_threshold": p.loss_threshold, "seed": p.seed},
        lambda: object_prompts.make_object_prompts(
            raw, mdl, tok, pairs=pairs, n_generate=p.n_generate, n_keep=p.n_keep,
            loss_threshold=p.loss_threshold, seed=p.seed, device=device,
            # the release's own texts for the selected pairs (the full stream is generated, then selected)
            candidates=object_prompts.release_candidates(pairs, per_pair=p.n_generate, seed=p.seed)),
        force=force, log=log))

    for variant, name, stats in (("11B", layout.CHECKER_PROMPTS, layout.CHECKER_PROMPT_STATS),
                                 ("5A", layout.TOKEN_CHECKER_PROMPTS, layout.TOKEN_CHECKER_PROMPT_STATS)):
        result.stages.append(run_stage(
            raw, f"{variant}_checker_prompts", [], [name, stats],
            {**model_params, "variant": variant, "n_target": p.checker_target, "seed": p.seed,
             "objects": checker_objects},
            lambda variant=variant: checker_prompts.make_checker_prompts(
                raw, tok, variant, n_target=p.checker_target, seed=p.seed, objects=checker_objects),
            force=force, log=log))

    extraction = {"position": p.position, "batch_size": p.batch_size, "dtype": p.dtype, **model_params}
    for prompts_file, unit_columns, out_file in (
            (layout.OBJECT_PROMPTS, ["ast_node", "builtin_obj"], layout.OBJECT_ACTIVATIONS),
            (layout.CHECKER_PROMPTS, ["object"], layout.CHECKER_ACTIVATIONS),
            (layout.TOKEN_CHECKER_PROMPTS, ["object"], layout.TOKEN_CHECKER_ACTIVATIONS)):
        result.stages.append(run_stage(
            raw, f"12_{Path(out_file).stem[3:]}", [prompts_file], [out_file], extraction,
            lambda pf=prompts_file, uc=unit_columns, of=out_file: activations.extract_to_file(
                mdl, tok, layout.read_table(raw / pf, required=uc + ["prompt_text"]), uc, raw / of,
                position=p.position,
                batch_size=p.batch_size, device=device, model_id=model_label, input_file=pf,
                checkpoint_path=raw / f".{of}.ckpt"),
            force=force, log=log))

    settings = list(layout.SETTINGS)
    result.stages.append(run_stage(
        raw, "13_object_masks", [layout.OBJECT_ACTIVATIONS],
        [layout.object_masks_name(e, c) for e, c in settings], {"settings": settings},
        lambda: masks.build_object_masks(raw, settings, resume=not force, writers=writers), force=force, log=log))
    result.stages.append(run_stage(
        raw, "13_checker_masks", [layout.CHECKER_ACTIVATIONS],
        [layout.checker_masks_name(e, c) for e, c in settings], {"settings": settings},
        lambda: masks.build_checker_masks(raw, settings, resume=not force, writers=writers), force=force,
        log=log))
    result.stages.append(run_stage(
        raw, "5A_token_checker_masks", [layout.TOKEN_CHECKER_ACTIVATIONS], [layout.TOKEN_CHECKER_MASKS],
        {"setting": layout.TOKEN_CHECKER_SETTING},
        lambda: masks.build_token_checker_masks(raw, resume=not force), force=force, log=log))

    mask_files = ([layout.object_masks_name(e, c) for e, c in settings]
                  + [layout.checker_masks_name(e, c) for e, c in settings])
    result.stages.append(run_stage(
        raw, "14_decomposition", mask_files,
        [layout.SUMMARY] + [layout.target_checker_name(e, c) for e, c in settings], {"settings": settings},
        lambda: decomposition.build_decomposition_tables(raw, settings), force=force, log=log))
    result.stages.append(run_stage(
        raw, "relaxed_modularity", [layout.object_masks_name(*layout.REFERENCE_SETTING)],
        [layout.MODULARITY_SCORES, layout.MODULARITY_DETAIL],
        {"setting": layout.REFERENCE_SETTING, "summation": p.modularity_summation},
        lambda: modularity.build_modularity_tables(raw, summation=p.modularity_summation), force=force, log=log))
    result.stages.append(run_stage(
        raw, "token_independence",
        [layout.object_masks_name(*layout.TOKEN_CHECKER_SETTING), layout.TOKEN_CHECKER_MASKS],
        [layout.TOKEN_INDEPENDENCE_SUMMARY, layout.TOKEN_INDEPENDENCE_DETAIL, layout.TOKEN_INDEPENDENCE_NO_KEYWORD],
        {"setting": layout.TOKEN_CHECKER_SETTING},
        lambda: token_independence.build_token_independence_tables(raw), force=force, log=log))

    manifest.write_manifest(raw, preset=asdict(p), model_ref=model_ref,
                            local_model_dir=model_dir if p.model is None and model is None else None)

    if export:
        from builder_utils.export import RAW_FILES, export_hub
        sources = [n for n in RAW_FILES if (raw / n).is_file()]
        card = os.path.relpath(export_dir / "README.md", raw)
        result.stages.append(run_stage(raw, "export", sources, [card], {"folder": export_dir.name},
                                       lambda: export_hub(raw, export_dir), force=force, log=log))
    return result


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from: {', '.join(sorted(PRESETS))})")
    return PRESETS[name]


def _make_output_folder(raw: Path) -> None:
    for parent in [raw, *raw.parents]:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{parent}: cannot build here, it is a file, not a folder")
        if parent.exists():
            break
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{raw}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(raw, os.W_OK):
        raise PermissionError(f"{raw}: output folder is not writable")


def _model_identity(model_ref: str, mini_dir: Path) -> tuple[str, str | None]:
    """(label, weights sha256) — a local model is named by its weights, not its path, so two builds in
    different folders record the same thing; a Hub model by its id (the manifest adds the revision)."""
    folder = Path(model_ref)
    if not folder.is_dir():
        return model_ref, None
    weights = folder / "model.safetensors"
    label = MINI_MODEL_LABEL if folder.resolve() == mini_dir.resolve() else folder.name
    return label, sha256_file(weights) if weights.is_file() else None


def _in_preset(concept: str, p: Preset) -> bool:
    kind, name = concept.split("__", 1)
    pool = p.ast_nodes if kind == "ast" else p.builtins
    return pool is None or name in pool


# --------------------------------------------------------------------------- the closing report


def summary_table(raw: Path) -> pd.DataFrame:
    """Per setting: non-empty universal masks (at ≥1 layer) and mean concept fraction, AST vs builtin."""
    summ = layout.read_table(raw / layout.SUMMARY).set_index(["epsilon", "consistency"])
    rows = []
    for e, c in layout.SETTINGS:
        uni = layout.read_object_masks(raw / layout.object_masks_name(e, c), pairs=False).universals
        nonempty = int(uni.masks.any(axis=(1, 2)).sum())
        r = summ.loc[(e, c)] if (e, c) in summ.index else None
        rows.append({"setting": layout.setting_tag(e, c), "non_empty_universals": f"{nonempty}/{len(uni.keys)}",
                     "ast_concept_fraction": None if r is None else r["ast_concept_fraction"],
                     "blt_concept_fraction": None if r is None else r["blt_concept_fraction"]})
    return pd.DataFrame(rows)
