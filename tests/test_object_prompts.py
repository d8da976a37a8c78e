"""Stage 11A: the concept matrix, the replayed generator, the loss scorer and the pair filter.

Expected numbers come from ALGORITHMS.md §1.2–§1.5 (the spec's own replay of the release), from
planted losses, or from an independent one-prompt-per-forward scorer written here.
"""

from __future__ import annotations

import ast
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from builder_utils import layout
from builder_utils import object_prompts as op
from builder_utils.concepts import AST_NODES, BUILTIN_OBJECTS, ISOLATED, REAL_BUILTINS

ISOLATED_SIX = ("Import", "ImportFrom", "Pass", "Break", "Continue", "Assert")


@pytest.fixture(scope="session")
def release() -> pd.DataFrame:
    """All 64,850 candidates of the release stream (a few seconds; cached by the module)."""
    return op.release_candidates()


# ----------------------------------------------------------------------------- the matrix (§1.2)


def test_matrix_size_and_inventory():
    pairs = op.build_concept_matrix()
    assert len(pairs) == 1297
    assert len(set(pairs)) == 1297
    assert {a for a, _ in pairs} == set(AST_NODES)            # 43
    assert {b for _, b in pairs} == set(BUILTIN_OBJECTS)      # 63, _isolated_ included
    assert len(AST_NODES) == 43 and len(BUILTIN_OBJECTS) == 63


def test_matrix_per_ast_counts():
    counts = Counter(a for a, _ in op.build_concept_matrix())
    expected = {
        **dict.fromkeys(["For", "While", "AsyncFor", "ListComp", "SetComp", "DictComp", "GeneratorExp"], 10),
        "Try": 13, "Raise": 13,
        **dict.fromkeys(["FunctionDef", "AsyncFunctionDef", "Return", "Call", "Lambda", "Yield", "YieldFrom",
                         "Assign", "AugAssign", "AnnAssign", "Delete", "Global", "Nonlocal", "Attribute",
                         "Subscript", "Starred", "Slice"], 49),
        "ClassDef": 62, "If": 62, "IfExp": 62,
        **dict.fromkeys(["BinOp", "BoolOp", "UnaryOp", "Compare", "Dict", "Set"], 14),
        "With": 46, "AsyncWith": 46,
        **dict.fromkeys(ISOLATED_SIX, 1),
    }
    assert dict(counts) == expected


def test_matrix_order():
    pairs = op.build_concept_matrix()
    iterables = ["bytearray", "bytes", "dict", "frozenset", "list", "memoryview", "range", "set", "str", "tuple"]
    assert pairs[:10] == [("For", b) for b in iterables]
    # AST nodes appear in family order, each node's pairs contiguous, builtins code-point sorted.
    nodes = list(dict.fromkeys(a for a, _ in pairs))
    assert nodes[:8] == ["For", "While", "AsyncFor", "ListComp", "SetComp", "DictComp", "GeneratorExp", "Try"]
    assert nodes == ["For", "While", "AsyncFor", "ListComp", "SetComp", "DictComp", "GeneratorExp", "Try", "Raise",
                     "FunctionDef", "AsyncFunctionDef", "Return", "Call", "Lambda", "Yield", "YieldFrom", "ClassDef",
                     "Assign", "AugAssign", "AnnAssign", "Delete", "Global", "Nonlocal", "If", "IfExp", "BinOp",
                     "BoolOp", "UnaryOp", "Compare", "With", "AsyncWith", "Import", "ImportFrom", "Attribute",
                     "Subscript", "Starred", "Slice", "Dict", "Set", "Pass", "Break", "Continue", "Assert"]
    for node in nodes:
        own = [b for a, b in pairs if a == node]
        assert own == sorted(own)
        first = pairs.index((node, own[0]))
        assert pairs[first:first + len(own)] == [(node, b) for b in own]
    assert [p for p in pairs if p[1] == ISOLATED] == [
        ("Import", ISOLATED), ("ImportFrom", ISOLATED), ("Pass", ISOLATED), ("Break", ISOLATED),
        ("Continue", ISOLATED), ("Assert", ISOLATED)]
    assert ("With", "frozenset") not in pairs and ("With", "len") in pairs
    assert not any(a == "With" and b in ("bytearray", "memoryview") for a, b in pairs)


def test_small_matrix_equals_the_dir_based_reference_on_this_python():
    # The release ran the dir()-based "full" grid through the small-mode filter; ours filters by the
    # inventory only. On this Python both must agree (order included).
    full = op.build_concept_matrix("full")
    filtered = [(a, b) for a, b in full if a in AST_NODES and (b in REAL_BUILTINS or b == ISOLATED)]
    assert filtered == op.build_concept_matrix()
    assert len(full) == 1390
    assert len({a for a, _ in full}) == 44 and len({b for _, b in full}) == 71


def test_unknown_matrix_mode():
    with pytest.raises(ValueError, match="mode"):
        op.build_concept_matrix("huge")


# ----------------------------------------------------------------------------- the generator (§1.3)


def test_release_stream_size_and_verification(release):
    assert len(release) == 64850
    assert release.groupby(["ast_node", "builtin_obj"], sort=False).size().eq(50).all()
    assert release.ast_verified.all()
    assert list(dict.fromkeys(zip(release.ast_node, release.builtin_obj))) == op.build_concept_matrix()
    assert (release.groupby(["ast_node", "builtin_obj"], sort=False).variation_id
            .apply(lambda v: list(v) == list(range(50))).all())
    assert release.variation_id.dtype == np.int64 and release.ast_verified.dtype == bool


def test_release_wrapper_counts(release):
    assert release.wrapper.value_counts().to_dict() == {"global": 26012, "function": 19397, "method": 19441}


def test_release_fixture_texts(release):
    first = release.iloc[0]
    assert (first.ast_node, first.builtin_obj, first.variation_id) == ("For", "bytearray", 0)
    assert (first.domain, first.wrapper) == ("finance", "global")
    assert first.prompt_text == ("print('Starting process')\nledger_entries = list(b'hello')\n"
                                 "for transaction in ledger_entries:\n    audit_record(transaction)\nstatus = False")
    imp = release[(release.ast_node == "Import") & (release.builtin_obj == ISOLATED)]
    assert imp.prompt_text.iloc[0] == "counter = 0\nimport ast\nprint('Done')"


def test_release_isolated_distinct_texts(release):
    iso = release[release.builtin_obj == ISOLATED]
    distinct = iso.groupby("ast_node").prompt_text.nunique().to_dict()
    assert distinct == {"Import": 45, "ImportFrom": 40, "Pass": 46, "Break": 47, "Continue": 43, "Assert": 47}


def test_texts_are_canonical_unparse_output(release):
    sample = release.prompt_text.iloc[::97]
    assert all(ast.unparse(ast.parse(t)) == t for t in sample)
    # Domains cycle with the index inside the pair.
    assert (release.domain == [op.DOMAIN_KEYS[v % 5] for v in release.variation_id]).all()


def test_release_candidates_selects_the_full_stream(release):
    subset = [("Pass", ISOLATED), ("For", "list"), ("Call", "len")]
    got = op.release_candidates(subset, per_pair=4)
    assert list(zip(got.ast_node, got.builtin_obj)) == [p for p in subset for _ in range(4)]
    for a, b in subset:
        want = release[(release.ast_node == a) & (release.builtin_obj == b)].prompt_text.iloc[:4].tolist()
        assert got[(got.ast_node == a) & (got.builtin_obj == b)].prompt_text.tolist() == want
    # Generating the subset alone consumes the stream differently: not the release's texts.
    own = op.generate_candidates(subset, n_generate=4)
    assert own.prompt_text.tolist() != got.prompt_text.tolist()


def test_release_candidates_bad_input():
    with pytest.raises(ValueError, match="not in the release matrix"):
        op.release_candidates([("For", "int")])            # For pairs with iterables only
    with pytest.raises(ValueError, match="per_pair"):
        op.release_candidates([("For", "list")], per_pair=51)


def test_generation_is_deterministic_and_seeded():
    subset = [("For", "list"), ("Assert", ISOLATED)]
    a = op.generate_candidates(subset, n_generate=10, seed=42)
    b = op.generate_candidates(subset, n_generate=10, seed=42)
    c = op.generate_candidates(subset, n_generate=10, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert a.prompt_text.tolist() != c.prompt_text.tolist()


def test_pair_without_template_yields_nothing_and_draws_nothing():
    # (For, _isolated_) has no template: no candidates and no RNG draws, so the next pair is unchanged.
    alone = op.generate_candidates([("For", "list")], n_generate=5)
    after = op.generate_candidates([("For", ISOLATED), ("For", "list")], n_generate=5)
    assert after.prompt_text.tolist() == alone.prompt_text.tolist()
    assert not (after.builtin_obj == ISOLATED).any()


@pytest.mark.parametrize("pairs, message", [
    ([], "no .*pairs"),
    ([("Foo", "list")], "unknown AST node 'Foo'"),
    ([("For", "no_such_builtin")], "unknown builtin 'no_such_builtin'"),
    ([("For", "list"), ("For", "list")], "twice"),
])
def test_generate_bad_pairs(pairs, message):
    with pytest.raises(ValueError, match=message):
        op.generate_candidates(pairs, n_generate=2)


# ----------------------------------------------------------------------------- the filter (§1.4, §1.5)


def _planted(pair_losses: dict[tuple[str, str], list[float]]):
    rows, losses = [], []
    for (a, b), ls in pair_losses.items():
        for i, loss in enumerate(ls):
            rows.append({"ast_node": a, "builtin_obj": b, "variation_id": i, "prompt_text": f"{a}-{b}-{i}",
                         "ast_verified": i % 2 == 0})
            losses.append(loss)
    cand = pd.DataFrame(rows)
    lengths = np.arange(len(cand), dtype=np.int64) + 2
    return cand, np.array(losses), lengths


def test_filter_drops_pairs_above_threshold_and_keeps_order():
    plan = {
        ("For", "list"): [2.0, 1.0, 2.5, 0.5],          # mean 1.5  kept
        ("For", "dict"): [3.5, 3.5, 3.5, 3.5],          # mean 3.5  dropped
        ("If", "int"): [2.0, 4.0, 3.0, 3.0],            # mean 3.0  kept: equal is not above (strict)
        ("Call", "len"): [0.1, 0.2, 9.0, 3.0],          # mean 3.075 dropped although it has low losses
        ("Pass", ISOLATED): [5.0, 0.5, 0.5, 0.5],       # mean 1.625 kept, not sorted by loss
    }
    cand, losses, lengths = _planted(plan)
    pairs = list(plan) + [("While", "str")]             # asked for, never generated
    out, stats = op.filter_pairs(cand, losses, lengths, loss_threshold=3.0, n_keep=3, pairs=pairs, n_generate=4)

    assert list(out.columns) == layout.OBJECT_PROMPT_COLUMNS
    assert out.dtypes["variation_id"] == np.int64 and out.dtypes["token_length"] == np.int64
    assert out.dtypes["sequence_loss"] == np.float64 and out.dtypes["ast_verified"] == bool
    assert all(pd.api.types.is_string_dtype(out.dtypes[c]) for c in ("ast_node", "builtin_obj", "prompt_text"))

    kept = [("For", "list"), ("If", "int"), ("Pass", ISOLATED)]
    assert list(zip(out.ast_node, out.builtin_obj)) == [p for p in kept for _ in range(3)]
    assert out.variation_id.tolist() == [0, 1, 2] * 3
    assert out.prompt_text.tolist() == [f"{a}-{b}-{i}" for a, b in kept for i in range(3)]
    assert out.sequence_loss.tolist() == [2.0, 1.0, 2.5, 2.0, 4.0, 3.0, 5.0, 0.5, 0.5]
    assert out.ast_verified.tolist() == [True, False, True] * 3
    assert out.token_length.tolist() == [2, 3, 4, 10, 11, 12, 18, 19, 20]

    assert stats["catastrophic_pairs"] == [["For", "dict"], ["Call", "len"]]
    assert stats["empty_gen_pairs"] == [["While", "str"]]
    assert (stats["total_pairs"], stats["successful_pairs"], stats["failed_pairs"]) == (6, 3, 3)
    assert stats["total_prompts"] == 9 and stats["n_keep"] == 3 and stats["n_generate"] == 4
    assert stats["n_ast"] == 5 and stats["n_builtins"] == 6
    assert stats["run_name"] == "11A_object" and stats["mode"] == "small"
    assert stats["loss_threshold"] == 3.0


def test_filter_drop_worst_rule():
    means = [7.1, 7.9, 7.5, 7.3, 7.7, 7.6]
    plan = {("For", b): [m - 0.1, m + 0.1] for b, m in zip(["list", "dict", "str", "set", "tuple", "range"], means)}
    cand, losses, lengths = _planted(plan)
    out, stats = op.filter_pairs(cand, losses, lengths, loss_threshold="drop_worst:2", n_keep=2)
    assert stats["catastrophic_pairs"] == [["For", "dict"], ["For", "tuple"]]     # means 7.9 and 7.7
    assert stats["loss_threshold"] == pytest.approx(7.6) and stats["loss_threshold_rule"] == "drop_worst:2"
    assert stats["successful_pairs"] == 4 and len(out) == 8
    with pytest.raises(ValueError, match="would drop all"):
        op.filter_pairs(cand, losses, lengths, loss_threshold="drop_worst:6")


@pytest.mark.parametrize("bad", ["drop_worst:0", "drop_worst:x", "drop_worst:", "loose", float("nan"),
                                 float("inf"), None, True])
def test_bad_loss_threshold(bad):
    cand, losses, lengths = _planted({("For", "list"): [1.0], ("For", "dict"): [2.0]})
    with pytest.raises(ValueError, match="threshold"):
        op.filter_pairs(cand, losses, lengths, loss_threshold=bad)


def test_filter_bad_input():
    cand, losses, lengths = _planted({("For", "list"): [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 candidates but 1 losses"):
        op.filter_pairs(cand, losses[:1], lengths[:1], loss_threshold=3.0)
    with pytest.raises(ValueError, match="not in `pairs`"):
        op.filter_pairs(cand, losses, lengths, loss_threshold=3.0, pairs=[("If", "int")])
    with pytest.raises(ValueError, match="lack column"):
        op.filter_pairs(cand.drop(columns="prompt_text"), losses, lengths, loss_threshold=3.0)


# ----------------------------------------------------------------------------- the scorer, on a real small GPT-2


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    from builder_utils.models import train_mini_tokenizer

    texts = op.release_candidates(op.build_concept_matrix()[::40], per_pair=10).prompt_text.tolist()
    tokenizer = train_mini_tokenizer(texts, vocab_size=400)
    eos = tokenizer.eos_token_id
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=512,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        initializer_range=0.5)      # large weights: logits (and losses) vary a lot per token
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    return model, tokenizer


def _one_at_a_time(model, tokenizer, texts, max_length=512):
    """The release's scorer: one prompt per forward, F.cross_entropy mean over T-1 tokens."""
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tokenizer(t, return_tensors="pt", truncation=True, max_length=max_length,
                            add_special_tokens=False)["input_ids"]
            if ids.shape[1] < 2:
                out.append((50.0, ids.shape[1]))
                continue
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()
            out.append((loss, ids.shape[1]))
    return np.array([l for l, _ in out]), np.array([n for _, n in out])


def test_batched_scorer_equals_one_prompt_per_forward(tiny_lm):
    model, tokenizer = tiny_lm
    texts = op.release_candidates([("ClassDef", "list"), ("Import", ISOLATED), ("With", "print")],
                                  per_pair=8).prompt_text.tolist()
    texts += ["x", "", "a = 1", "def f():\n    return 1\n" * 6]
    want_loss, want_len = _one_at_a_time(model, tokenizer, texts)
    assert want_loss[:-4].std() > 0.05              # a test with power: losses really differ
    assert want_len[-4] == 1 and want_len[-3] == 0 and want_len[-1] > 40    # "x", "", a long text
    for batch_size in (1, 7, 64):
        loss, length = op.score_prompts(model, tokenizer, texts, batch_size=batch_size, progress=False)
        assert loss.dtype == np.float64 and length.dtype == np.int64
        np.testing.assert_array_equal(length, want_len)
        np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)
    assert loss[texts.index("")] == 50.0 and length[texts.index("")] == 0


def test_scorer_truncates_like_the_release(tiny_lm):
    model, tokenizer = tiny_lm
    texts = op.release_candidates([("Nonlocal", "dict")], per_pair=5).prompt_text.tolist()
    want_loss, want_len = _one_at_a_time(model, tokenizer, texts, max_length=8)
    loss, length = op.score_prompts(model, tokenizer, texts, max_length=8, batch_size=4, progress=False)
    assert (length == 8).all()
    np.testing.assert_array_equal(length, want_len)
    np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the stage


SUBSET = [("For", "list"), ("For", "dict"), ("If", "int"), ("Call", "len"), ("Import", ISOLATED), ("Pass", ISOLATED)]


def test_make_object_prompts_writes_release_files(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    cand = op.release_candidates(SUBSET, per_pair=6)
    path = op.make_object_prompts(tmp_path, model, tokenizer, pairs=SUBSET, n_generate=6, n_keep=4,
                                  loss_threshold="drop_worst:2", candidates=cand, batch_size=8)
    assert path == tmp_path / layout.OBJECT_PROMPTS
    df = layout.read_table(path, required=layout.OBJECT_PROMPT_COLUMNS)
    assert list(df.columns) == layout.OBJECT_PROMPT_COLUMNS
    assert [str(df.dtypes[c]) for c in ("variation_id", "sequence_loss", "token_length", "ast_verified")] == [
        "int64", "float64", "int64", "bool"]
    stats_text = (tmp_path / layout.OBJECT_PROMPT_STATS).read_text()
    stats = json.loads(stats_text)
    assert list(stats) == sorted(stats)
    assert len(stats["catastrophic_pairs"]) == 2 and stats["successful_pairs"] == 4
    assert stats["total_prompts"] == len(df) == 16 and stats["mode"] == "subset"

    # The dropped pairs are the two with the highest mean loss, recomputed independently.
    losses, _ = _one_at_a_time(model, tokenizer, cand.prompt_text.tolist())
    means = pd.Series(losses).groupby([cand.ast_node, cand.builtin_obj], sort=False).mean()
    assert sorted(map(list, means.nlargest(2).index)) == sorted(stats["catastrophic_pairs"])
    kept = [p for p in SUBSET if list(p) not in stats["catastrophic_pairs"]]
    assert list(dict.fromkeys(zip(df.ast_node, df.builtin_obj))) == kept
    for a, b in kept:
        texts = cand[(cand.ast_node == a) & (cand.builtin_obj == b)].prompt_text.iloc[:4].tolist()
        assert df[(df.ast_node == a) & (df.builtin_obj == b)].prompt_text.tolist() == texts

    # Same inputs: byte-identical stats, no leftover checkpoint or temp files.
    op.make_object_prompts(tmp_path, model, tokenizer, pairs=SUBSET, n_generate=6, n_keep=4,
                           loss_threshold="drop_worst:2", candidates=cand, batch_size=8)
    assert (tmp_path / layout.OBJECT_PROMPT_STATS).read_text() == stats_text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([layout.OBJECT_PROMPTS, layout.OBJECT_PROMPT_STATS])


def test_make_object_prompts_resumes_after_interruption(tiny_lm, tmp_path, monkeypatch):
    model, tokenizer = tiny_lm
    cand = op.release_candidates(SUBSET, per_pair=5)          # 30 prompts, checkpoint every 8
    monkeypatch.setattr(op, "SCORE_CHECKPOINT_EVERY", 8)
    real = op.score_prompts
    calls = []

    def flaky(model, tokenizer, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(model, tokenizer, texts, **kw)

    monkeypatch.setattr(op, "score_prompts", flaky)
    kw = dict(pairs=SUBSET, n_generate=5, n_keep=5, loss_threshold=100.0, candidates=cand, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        op.make_object_prompts(tmp_path / "a", model, tokenizer, **kw)
    assert not (tmp_path / "a" / layout.OBJECT_PROMPTS).exists()
    calls.clear()
    op.make_object_prompts(tmp_path / "a", model, tokenizer, **kw)
    assert calls == [8, 6]                                    # the first 16 came from the checkpoint

    monkeypatch.setattr(op, "score_prompts", real)
    op.make_object_prompts(tmp_path / "b", model, tokenizer, **kw)
    a = pd.read_parquet(tmp_path / "a" / layout.OBJECT_PROMPTS)
    b = pd.read_parquet(tmp_path / "b" / layout.OBJECT_PROMPTS)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 30


def test_make_object_prompts_rejects_bad_input_before_scoring(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="no .*pairs"):
        op.make_object_prompts(tmp_path, model, tokenizer, pairs=[])
    with pytest.raises(ValueError, match="unknown AST node"):
        op.make_object_prompts(tmp_path, model, tokenizer, pairs=[("Loop", "list")])
    cand = op.release_candidates([("For", "list")], per_pair=2)
    with pytest.raises(ValueError, match="not in `pairs`"):
        op.make_object_prompts(tmp_path, model, tokenizer, pairs=[("If", "int")], candidates=cand)
    with pytest.raises(ValueError, match="threshold"):
        op.make_object_prompts(tmp_path, model, tokenizer, pairs=[("For", "list")], candidates=cand,
                               loss_threshold="strict")
    assert not any(tmp_path.iterdir())


def test_cli(tiny_lm, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_object_prompts_cli", Path(__file__).resolve().parents[1] / "scripts" / "make_object_prompts.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "--loss-threshold" in capsys.readouterr().out

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert cli.main(["--data-dir", str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--device", "cpu",
                     "--ast-nodes", "For,Import,Pass", "--builtins", "list,dict,_isolated_",
                     "--n-generate", "3", "--n-keep", "2", "--loss-threshold", "drop_worst:1"]) == 0
    df = layout.read_table(tmp_path / "out" / layout.OBJECT_PROMPTS)
    stats = json.loads((tmp_path / "out" / layout.OBJECT_PROMPT_STATS).read_text())
    assert stats["total_pairs"] == 4 and len(stats["catastrophic_pairs"]) == 1 and len(df) == 6
    want = op.release_candidates([("For", "dict"), ("For", "list"), ("Import", ISOLATED), ("Pass", ISOLATED)],
                                 per_pair=2)
    assert set(df.prompt_text) <= set(want.prompt_text)
