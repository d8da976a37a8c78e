#!/usr/bin/env python
"""Build the offline mini model: a seeded, untrained 8-layer GPT-2 with a 2048-token BPE tokenizer.

    python scripts/make_mini_model.py --out build/model --data-dir build/raw
    python scripts/make_mini_model.py --out /tmp/m --texts prompts.parquet more_code.py --seed 1

It stands in for openai/circuit-sparsity where the Hub is unreachable: the same loader
(builder_utils.models.load_model_and_tokenizer) and the same `.mlp` hook discovery run on it.
The tokenizer is trained on the given texts; the texts must fit in --n-positions tokens.
Same seed and texts give byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import layout, models  # noqa: E402

PROMPT_TABLES = (layout.OBJECT_PROMPTS, layout.CHECKER_PROMPTS, layout.TOKEN_CHECKER_PROMPTS)


def read_texts(path: Path) -> list[str]:
    """Tables give their prompt_text column; any other file gives its blank-line-separated paragraphs."""
    if path.suffix in (".parquet", ".csv"):
        return [t for t in layout.read_table(path, required=["prompt_text"])["prompt_text"] if isinstance(t, str) and t]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return [p.strip("\n") for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder to write the model and tokenizer to")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help=f"take the prompt_text of every prompt table found here ({', '.join(PROMPT_TABLES)})")
    ap.add_argument("--texts", type=Path, nargs="+", default=[],
                    help="more text files: .parquet/.csv tables (their prompt_text column) or plain text/code "
                         "files (one text per blank-line-separated paragraph)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation (default 0)")
    ap.add_argument("--n-layer", type=int, default=models.MINI_N_LAYER, help="blocks (default %(default)s)")
    ap.add_argument("--n-embd", type=int, default=models.MINI_N_EMBD,
                    help="residual width = `.mlp` output channels (default %(default)s)")
    ap.add_argument("--n-head", type=int, default=models.MINI_N_HEAD, help="attention heads (default %(default)s)")
    ap.add_argument("--vocab-size", type=int, default=models.MINI_VOCAB_SIZE,
                    help="tokenizer size; eos is the last id (default %(default)s, as tinypython_2k)")
    ap.add_argument("--n-positions", type=int, default=models.MINI_N_POSITIONS,
                    help="context length; every text must fit (default %(default)s)")
    ap.add_argument("--initializer-range", type=float, default=models.MINI_INITIALIZER_RANGE,
                    help="std of the weight init, sets the typical channel's mean |act| (default %(default)s)")
    ap.add_argument("--channel-spread", type=float, default=models.MINI_CHANNEL_SPREAD,
                    help="std (in decades) of a per-channel gain on every MLP output, so channel means spread "
                         "across the ε grid 0.001/0.1/0.5 (default %(default)s)")
    args = ap.parse_args(argv)

    texts: list[str] = []
    if args.data_dir is not None:
        tables = [args.data_dir / t for t in PROMPT_TABLES if (args.data_dir / t).is_file()]
        if not tables:
            ap.error(f"no prompt table ({', '.join(PROMPT_TABLES)}) in {args.data_dir}")
        for t in tables:
            texts += read_texts(t)
    for path in args.texts:
        texts += read_texts(path)
    if not texts:
        ap.error("no texts: give --data-dir and/or --texts")
    out = models.build_mini_model(args.out, texts, seed=args.seed, n_layer=args.n_layer, n_embd=args.n_embd,
                                  n_head=args.n_head, vocab_size=args.vocab_size, n_positions=args.n_positions,
                                  initializer_range=args.initializer_range, channel_spread=args.channel_spread)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
