#!/usr/bin/env python
"""Benchmark the Hub export on a full-size fixture atlas (1,276 pairs × 8 layers × 2048 channels).

    python benchmarks/bench_export.py                 # writes the fixture atlas into a temp folder first
    python benchmarks/bench_export.py --raw DIR       # reuse an atlas already there (written if DIR is empty)

Prints seconds per config family, parquet size against the HDF5/CSV files each family comes
from, the viewer's first-rows payload per family, and a same-process baseline: reading every
source with the layout readers alone (the floor any export must pay). Targets (issue 2):
all configs in ≤ 60 s on 2 cores; mask parquet ≥ 10× smaller than the 13_* HDF5 files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TARGET_SECONDS = 60.0
TARGET_MASK_RATIO = 10.0
FIRST_ROWS_MAX_BYTES = 200_000


def family_of(name: str) -> str:
    for family in ("pair_masks", "checker_masks", "target_checker", "masks"):
        if name.startswith(family + "_eps"):
            return family
    return name


def read_sources_only(raw: Path, module) -> tuple[float, float]:
    """Baseline: (wall, CPU) seconds to read every source through the layout readers, writing nothing."""
    from builder_utils import layout
    t0, cpu0 = time.perf_counter(), time.process_time()
    for e, c in layout.SETTINGS:
        layout.read_object_masks(raw / layout.object_masks_name(e, c))
        layout.read_checker_masks(raw / layout.checker_masks_name(e, c))
        layout.read_target_checker(raw / layout.target_checker_name(e, c))
    for name in (layout.OBJECT_ACTIVATIONS, layout.CHECKER_ACTIVATIONS):
        if (raw / name).is_file():
            layout.read_activations(raw / name)
    if (raw / layout.TOKEN_CHECKER_MASKS).is_file():
        layout.read_checker_masks(raw / layout.TOKEN_CHECKER_MASKS)
    for cfg in module.CONFIGS:
        if cfg.family in module.TABLE_FEATURES and (raw / cfg.source).is_file():
            layout.read_table(raw / cfg.source, index_col=0 if cfg.family == "modularity_scores" else None)
    return time.perf_counter() - t0, time.process_time() - cpu0


def first_rows_bytes(out: Path, name: str) -> int:
    import datasets
    rows = list(itertools.islice(datasets.load_dataset(str(out), name, split="train", streaming=True), 10))
    items = [{"row_idx": i, "row": r, "truncated_cells": []} for i, r in enumerate(rows)]
    return len(json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, help="raw atlas folder to reuse (written there if it has no 14_summary.csv)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    os.environ.setdefault("HF_HOME", str(work / "hf"))          # keep datasets' caches out of ~/.cache
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets  # noqa: F401  (after the environment is set)
    from builder_utils import layout
    from builder_utils.export import export_hub, load_builder_module
    from builder_utils.fixtures import write_fixture_atlas

    raw = args.raw or work / "raw"
    if not (raw / layout.SUMMARY).is_file():
        t0 = time.perf_counter()
        write_fixture_atlas(raw, n_pairs=None, width=2048)
        print(f"fixture atlas written in {time.perf_counter() - t0:.1f} s -> {raw}")
    module = load_builder_module()
    out = work / "CSP-Atlas"

    baseline_wall, baseline = read_sources_only(raw, module)
    t0, cpu0 = time.perf_counter(), time.process_time()
    report = export_hub(raw, out)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(report.format())

    seconds, cpu, rows, parquet, sources = (defaultdict(float), defaultdict(float), defaultdict(int), defaultdict(int),
                                            defaultdict(set))
    for c in report.written:
        f = family_of(c.name)
        seconds[f] += c.seconds
        cpu[f] += c.cpu_seconds
        rows[f] += c.num_rows
        parquet[f] += c.parquet_bytes
        sources[f].add(c.source)
    source_bytes = {f: sum((raw / s).stat().st_size for s in srcs) for f, srcs in sources.items()}

    print(f"\n{'family':<30} {'configs':>7} {'rows':>7} {'wall s':>7} {'cpu s':>6} {'parquet MB':>10} {'source MB':>9} "
          f"{'smaller':>8} {'10 rows kB':>10}")
    for f in seconds:
        n_cfg = sum(family_of(c.name) == f for c in report.written)
        first = next(c.name for c in report.written if family_of(c.name) == f)
        kb = first_rows_bytes(out, first) / 1000
        flag = "" if kb * 1000 <= FIRST_ROWS_MAX_BYTES else "  > viewer budget: cells truncated"
        print(f"{f:<30} {n_cfg:>7} {rows[f]:>7,} {seconds[f]:>7.2f} {cpu[f]:>6.2f} {parquet[f] / 1e6:>10.2f} "
              f"{source_bytes[f] / 1e6:>9.2f} {source_bytes[f] / parquet[f]:>7.1f}x {kb:>10.1f}{flag}")

    mask_parquet = sum(parquet[f] for f in ("masks", "pair_masks", "checker_masks"))
    mask_h5 = sum(p.stat().st_size for p in raw.glob("13_*.h5"))
    ratio = mask_h5 / mask_parquet
    print(f"\nexport, all {len(report.written)} configs: {total:.1f} s wall, {total_cpu:.1f} s CPU "
          f"(target ≤ {TARGET_SECONDS:.0f} s) {'OK' if total <= TARGET_SECONDS else 'MISSED'}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall time is only meaningful on an idle machine)")
    print(f"baseline, reading every source with the layout readers only: {baseline_wall:.1f} s wall, "
          f"{baseline:.1f} s CPU (export = {total_cpu / baseline:.1f}× the bare reads, CPU)")
    print(f"mask parquet (masks + pair_masks + checker_masks): {mask_parquet / 1e6:.2f} MB vs 13_*.h5 "
          f"{mask_h5 / 1e6:.2f} MB = {ratio:.1f}× smaller (target ≥ {TARGET_MASK_RATIO:.0f}×) "
          f"{'OK' if ratio >= TARGET_MASK_RATIO else 'MISSED'}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
