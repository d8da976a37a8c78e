#!/usr/bin/env python
"""Stages 11B / 5A: write the checker prompts (keyword token present, concept absent).

    python scripts/make_checker_prompts.py build/raw --model build/model            # both variants
    python scripts/make_checker_prompts.py DATA --variant 11B --model openai/circuit-sparsity

Writes 11B_checker_prompts.parquet (+ 11B_checker_stats.json) and/or
token_checker_prompts.parquet (+ token_checker_stats.json) into DATA_DIR.
Only the tokenizer is loaded, never the model weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import checker_prompts  # noqa: E402
from builder_utils.concepts import KEYWORD_MAP  # noqa: E402

PAPER_MODEL_ID = "openai/circuit-sparsity"


def load_tokenizer(path_or_id: str):
    """The project's loader when present (pad = eos, local folders never hit the Hub), else AutoTokenizer."""
    if importlib.util.find_spec("builder_utils.models") is not None:
        from builder_utils.models import load_tokenizer as project_loader
        return project_loader(path_or_id)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path, help="folder the prompt tables and stats JSON are written to")
    ap.add_argument("--variant", default="both", choices=[*checker_prompts.VARIANTS, "both"],
                    help="11B: 11B_checker_prompts.parquet (3 identifier templates); 5A: token_checker_prompts"
                         ".parquet (4 identifier templates); both (default)")
    ap.add_argument("--model", default=PAPER_MODEL_ID,
                    help=f"Hub id or local folder whose tokenizer validates the prompts (default: {PAPER_MODEL_ID})")
    ap.add_argument("--n-target", type=int, default=checker_prompts.N_TARGET,
                    help=f"prompts kept per object; candidates generated = 3x (default: {checker_prompts.N_TARGET})")
    ap.add_argument("--seed", type=int, default=checker_prompts.SEED,
                    help=f"seed of the single RNG stream shared by all objects (default: {checker_prompts.SEED})")
    ap.add_argument("--objects", nargs="+", metavar="OBJECT", default=None,
                    help="only these keyword concepts, e.g. ast__Import builtin__len (default: all "
                         f"{len(KEYWORD_MAP)}); their prompts equal those of a full run")
    args = ap.parse_args(argv)

    if args.n_target < 1:
        ap.error(f"--n-target must be >= 1, got {args.n_target}")
    if args.objects:
        unknown = [o for o in args.objects if o not in KEYWORD_MAP]
        if unknown:
            ap.error(f"unknown object(s) {unknown}; choose from the keys of concepts.KEYWORD_MAP")

    tokenizer = load_tokenizer(args.model)
    variants = list(checker_prompts.VARIANTS) if args.variant == "both" else [args.variant]
    for variant in variants:
        path = checker_prompts.make_checker_prompts(args.data_dir, tokenizer, variant, n_target=args.n_target,
                                                    seed=args.seed, objects=args.objects, progress=True)
        stats = json.loads((path.parent / checker_prompts.VARIANTS[variant].stats_file).read_text())
        short = stats["short_objects"]
        print(f"{variant}: {stats['n_prompts']} prompts for {len(stats['n_valid'])} objects -> {path}")
        if short:
            print(f"  {len(short)} object(s) short of {args.n_target}: "
                  + ", ".join(f"{o} ({stats['n_valid'][o]})" for o in short))
    return 0


if __name__ == "__main__":
    sys.exit(main())
