"""Stages 11B / 5A: checker prompts (ALGORITHMS.md §2–§4), validated under a real byte-level BPE tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from builder_utils import checker_prompts as cp
from builder_utils import layout, models
from builder_utils.concepts import KEYWORD_MAP

REPO = Path(__file__).resolve().parents[1]


def _texts() -> list[str]:
    return [c[3] for variant in cp.VARIANTS for c in cp.raw_candidates(variant)]


@pytest.fixture(scope="session")
def tokenizer():
    """The offline mini tokenizer (2048 ids requested), trained on the checker candidates."""
    return models.train_mini_tokenizer(_texts(), vocab_size=2048)


@pytest.fixture(scope="session")
def coarse_tokenizer():
    """A 300-id tokenizer: every keyword splits into several tokens."""
    return models.train_mini_tokenizer(_texts(), vocab_size=300)


@pytest.fixture(scope="session")
def generated(tokenizer):
    return {v: cp.generate_checker_prompts(tokenizer, v) for v in cp.VARIANTS}


def _by_object(raw):
    out = {}
    for obj, _kw, category, text in raw:
        out.setdefault(obj, []).append((category, text))
    return out


# ----------------------------------------------------------------------------- data


def test_word_banks_match_spec():
    assert len(KEYWORD_MAP) == 58
    assert len(cp.KEYWORDS) == 55                    # yield and async are shared
    assert len(cp.VAR_NAMES) == 31 and len(set(cp.VAR_NAMES)) == 31
    removed = [v for v in cp._VAR_NAME_BANK if v not in cp.VAR_NAMES]
    assert removed == ["entry", "offset", "width_val"]
    assert not any(kw in v for v in cp.VAR_NAMES for kw in cp.KEYWORDS)
    assert len(cp.STRING_WORDS) == 49 and len(set(cp.STRING_WORDS)) == 49
    assert len(cp.CONTEXT_WRAPPERS) == 6 and all(w.count(cp.SNIPPET) == 1 for w in cp.CONTEXT_WRAPPERS)
    # 54 of the 55 keywords have identifier variants; "from" has none.
    assert set(cp.KEYWORDS) - set(cp.IDENTIFIER_VARIANTS) == {"from"}
    assert len(cp.IDENTIFIER_VARIANTS) == 54
    assert all(kw not in idents for kw, idents in cp.IDENTIFIER_VARIANTS.items())
    # Release data quirk, kept as data: five "variants" do not contain their keyword at all.
    lacking = {(kw, i) for kw, idents in cp.IDENTIFIER_VARIANTS.items() for i in idents if kw not in i}
    assert lacking == {("continue", "continuous_mode"), ("continue", "continuum"), ("with", "width_value"),
                       ("any", "tyranny"), ("next", "annex_id")}
    assert len(cp.VARIANTS["11B"].c_templates) == 3 and len(cp.VARIANTS["5A"].c_templates) == 4


# ----------------------------------------------------------------------------- raw candidates


@pytest.mark.parametrize("variant", ["11B", "5A"])
def test_raw_candidate_counts(variant):
    raw = cp.raw_candidates(variant)
    per_object = Counter(obj for obj, *_ in raw)
    assert list(per_object) == sorted(KEYWORD_MAP)          # sorted object order, contiguous blocks
    assert per_object.pop("ast__ImportFrom") == 120          # no C_identifier for "from"
    assert set(per_object.values()) == {150} and len(per_object) == 57
    cats = Counter((obj, cat) for obj, _, cat, _ in raw)
    assert all(n == 30 for n in cats.values())
    assert ("ast__ImportFrom", "C_identifier") not in cats
    assert all(kw == KEYWORD_MAP[obj]["keyword"] for obj, kw, _, _ in raw)
    # One iteration yields its categories in the order A, B, C, D, E.
    first = [cat for obj, _, cat, _ in raw if obj == "ast__Assert"][:5]
    assert first == list(cp.CATEGORIES)


def test_raw_candidates_deterministic_and_seeded():
    assert cp.raw_candidates("11B") == cp.raw_candidates("11B")
    assert cp.raw_candidates("11B", seed=1) != cp.raw_candidates("11B")
    # n_target sets the iterations: 10 * 3 // 5 = 6 per object.
    small = Counter(obj for obj, *_ in cp.raw_candidates("5A", n_target=10))
    assert small["ast__Import"] == 30 and small["ast__ImportFrom"] == 24


def test_11B_concept_valid_range_matches_spec():
    """ALGORITHMS.md §3: before the token check, valid counts per object range from 85 to 146."""
    valid = Counter(obj for obj, _, _, text in cp.raw_candidates("11B") if cp.concept_absent(text, obj))
    assert min(valid.values()) == 85 and max(valid.values()) == 146


def test_variants_share_the_stream_until_the_first_C_draw():
    a, b = cp.raw_candidates("11B"), cp.raw_candidates("5A")
    first_c = next(i for i, c in enumerate(a) if c[2] == "C_identifier")
    assert first_c == next(i for i, c in enumerate(b) if c[2] == "C_identifier")
    assert a[:first_c] == b[:first_c]
    first_diff = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert first_diff >= first_c
    assert len(a) == len(b) and a != b
    # The list comprehension template is 5A's alone, and never used for the "for" keyword.
    listcomp = [c for c in b if c[2] == "C_identifier" and " for " in c[3]]
    assert listcomp and all(c[1] != "for" for c in listcomp)
    assert not any(c[2] == "C_identifier" and " in []]" in c[3] for c in a)
    assert not any(c[1] == "for" and " in []]" in c[3] for c in b if c[2] == "C_identifier")


# ----------------------------------------------------------------------------- the three checks


def test_parses():
    assert cp.parses("x = 1\ny = 2")
    assert not cp.parses("def f():\n    # c\nx = 1\n    return None")    # two-line snippet, not re-indented
    assert not cp.parses("x = (")


@pytest.mark.parametrize("text,obj,absent", [
    ('x = "for each"', "ast__For", True),
    ("x = [i for i in y]", "ast__For", False),          # ListComp is For-family
    ("x = {i: 1 for i in y}", "ast__For", False),
    ("def f():\n    yield from x", "ast__Yield", False),
    ("x = 1 if y else 2", "ast__If", False),             # IfExp forbidden for If
    ("x = len", "builtin__len", True),                   # bare reference allowed
    ("x = a.len()", "builtin__len", True),               # attribute call allowed
    ("x = len(y)", "builtin__len", False),
    ("print(len)", "builtin__print", False),
    ("import os", "ast__ImportFrom", False),
    ("x = (", "ast__Pass", False),                       # unparsable: not a valid checker prompt
])
def test_concept_absent(text, obj, absent):
    assert cp.concept_absent(text, obj) is absent


def test_print_E_prompts_always_rejected():
    e = [t for obj, _, cat, t in cp.raw_candidates("11B") if obj == "builtin__print" and cat == "E_print"]
    assert len(e) == 30
    assert not any(cp.concept_absent(t, "builtin__print") for t in e)


def test_keyword_token_present_decode_rule(tokenizer):
    """A space-prefixed keyword token differs from the bare keyword's ids; the decode rule finds it."""
    text = "# import things\nx = 1"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.encode("import", add_special_tokens=False)[0] not in ids   # precondition
    assert cp.keyword_token_present(text, "import", tokenizer)
    assert cp.keyword_token_present('x = "import"', "import", tokenizer)       # bare ids rule
    assert not cp.keyword_token_present("x = 1", "import", tokenizer)


def test_keyword_split_into_several_tokens_is_found(coarse_tokenizer):
    tok = coarse_tokenizer
    kw_ids = tok.encode("nonlocal", add_special_tokens=False)
    assert len(kw_ids) > 2                                              # precondition: split
    text = 'x = {"nonlocal": True}'
    assert not any(tok.decode([t]).strip() == "nonlocal" for t in tok.encode(text, add_special_tokens=False))
    assert cp.keyword_token_present(text, "nonlocal", tok)             # only the contiguous rule can find it
    assert not cp.keyword_token_present('x = {"non local": True}', "nonlocal", tok)


# ----------------------------------------------------------------------------- selection


def test_select_prompts_category_blocks_then_fill():
    # Raw order interleaves categories; B has only 3 valid, C none.
    valid = []
    for i in range(12):
        valid.append(("A_string", f"a{i}"))
        if i < 3:
            valid.append(("B_comment", f"b{i}"))
        valid.append(("D_dictkey", f"d{i}"))
        valid.append(("E_print", f"e{i}"))
    got = cp.select_prompts(valid, 50)
    block = [f"a{i}" for i in range(10)] + ["b0", "b1", "b2"] + [f"d{i}" for i in range(10)] \
        + [f"e{i}" for i in range(10)]
    fill = ["a10", "d10", "e10", "a11", "d11", "e11"]                 # remaining, in raw order
    assert got == block + fill
    # Enough candidates: 6 per category (21), then the fill is cut at n_target = 30.
    block30 = [f"a{i}" for i in range(6)] + ["b0", "b1", "b2"] + [f"d{i}" for i in range(6)] \
        + [f"e{i}" for i in range(6)]
    assert cp.select_prompts(valid, 30) == block30 + ["a6", "d6", "e6", "a7", "d7", "e7", "a8", "d8", "e8"]
    # n_target 10: 2 per category, then fill.
    assert cp.select_prompts(valid, 10) == ["a0", "a1", "b0", "b1", "d0", "d1", "e0", "e1", "a2", "b2"]


def test_select_prompts_fill_compares_texts():
    valid = [("A_string", "same"), ("A_string", "x"), ("E_print", "same"), ("B_comment", "dup"),
             ("D_dictkey", "dup")]
    # per category 1: same, dup, dup(D), same(E); fill skips texts already selected.
    assert cp.select_prompts(valid, 5) == ["same", "dup", "dup", "same", "x"]


def test_prompts_for_object_with_planted_validity(tokenizer):
    cands = []
    for i in range(14):
        cands += [("A_string", f'x{i} = "the pass of {i}"'),           # valid
                  ("B_comment", "pass" if i % 2 else f"y = {i}  # pass it"),   # odd i: concept present
                  ("D_dictkey", f"z = ({i}" if i < 12 else f'z = {{"pass": {i}}}'),  # first 12 unparsable
                  ("E_print", f"print({i})")]                            # keyword missing
    chosen, counts = cp.prompts_for_object(cands, "ast__Pass", tokenizer, n_target=50)
    assert counts == {"n_raw": 56, "n_unparsable": 12, "n_concept_present": 7, "n_token_missing": 14,
                      "n_passed": 23, "n_valid": 23}
    a = [f'x{i} = "the pass of {i}"' for i in range(14)]
    b = [f"y = {i}  # pass it" for i in range(0, 14, 2)]
    d = [f'z = {{"pass": {i}}}' for i in (12, 13)]
    assert chosen == a[:10] + b + d + a[10:]


# ----------------------------------------------------------------------------- the stage


@pytest.mark.parametrize("variant", ["11B", "5A"])
def test_selected_prompts_pass_all_checks(generated, tokenizer, variant):
    table, stats = generated[variant]
    assert list(table.columns) == layout.CHECKER_PROMPT_COLUMNS
    assert table["variation_id"].dtype == "int64"
    assert list(pd.unique(table["object"])) == sorted(KEYWORD_MAP)
    raw = _by_object(cp.raw_candidates(variant))
    for obj, group in table.groupby("object", sort=False):
        kw = KEYWORD_MAP[obj]["keyword"]
        assert (group["keyword"] == kw).all()
        assert list(group["variation_id"]) == list(range(len(group)))
        assert 0 < len(group) <= 50 and stats["n_valid"][obj] == len(group)
        raw_texts = {t for _, t in raw[obj]}
        for text in group["prompt_text"]:
            assert text in raw_texts
            assert cp.parses(text) and cp.concept_absent(text, obj) and cp.keyword_token_present(text, kw, tokenizer)
        # The table is exactly "validate with the public checks, then select".
        valid = [(c, t) for c, t in raw[obj]
                 if cp.parses(t) and cp.concept_absent(t, obj) and cp.keyword_token_present(t, kw, tokenizer)]
        assert list(group["prompt_text"]) == cp.select_prompts(valid, 50)
        s = stats["objects"][obj]
        assert s["n_passed"] == len(valid)
        assert s["n_raw"] == s["n_unparsable"] + s["n_concept_present"] + s["n_token_missing"] + s["n_passed"]
    assert stats["n_prompts"] == len(table)
    assert stats["short_objects"] == [o for o in sorted(KEYWORD_MAP) if stats["n_valid"][o] < 50]


def test_short_objects_take_every_valid_prompt(coarse_tokenizer):
    table, stats = cp.generate_checker_prompts(coarse_tokenizer, "11B")
    assert stats["short_objects"], "the coarse tokenizer should leave some object short"
    for obj in stats["short_objects"]:
        s = stats["objects"][obj]
        assert s["short"] and s["n_valid"] == s["n_passed"] < 50
        assert (table["object"] == obj).sum() == s["n_valid"]


def test_subset_equals_full_run(generated, tokenizer):
    full = generated["5A"][0]
    objects = ["builtin__len", "ast__Import"]
    sub, stats = cp.generate_checker_prompts(tokenizer, "5A", objects=objects)
    expected = full[full["object"].isin(objects)].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, expected)
    assert sorted(stats["n_valid"]) == sorted(objects)


def test_make_checker_prompts_writes_table_and_stats(tmp_path, tokenizer):
    objects = ["ast__For", "builtin__print"]
    path = cp.make_checker_prompts(tmp_path, tokenizer, "5A", n_target=10, objects=objects)
    assert path == tmp_path / layout.TOKEN_CHECKER_PROMPTS
    table = layout.read_table(path, required=layout.CHECKER_PROMPT_COLUMNS)
    assert list(table.columns) == layout.CHECKER_PROMPT_COLUMNS
    assert table["variation_id"].dtype == "int64"
    stats_path = tmp_path / cp.TOKEN_CHECKER_STATS
    text = stats_path.read_text()
    stats = json.loads(text)
    assert text == json.dumps(stats, indent=2, sort_keys=True) + "\n"
    assert stats["variant"] == "5A" and stats["n_target"] == 10
    assert stats["n_valid"] == table.groupby("object").size().to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([layout.TOKEN_CHECKER_PROMPTS, cp.TOKEN_CHECKER_STATS])
    first = path.read_bytes()
    cp.make_checker_prompts(tmp_path, tokenizer, "5A", n_target=10, objects=objects)
    assert path.read_bytes() == first                                  # byte-identical rebuild
    cp.make_checker_prompts(tmp_path, tokenizer, "11B", n_target=10, objects=objects)
    assert (tmp_path / layout.CHECKER_PROMPTS).is_file() and (tmp_path / cp.CHECKER_STATS).is_file()


def test_bad_input_errors(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="unknown checker-prompt variant '11C'"):
        cp.raw_candidates("11C")
    with pytest.raises(ValueError, match="unknown checker-prompt variant"):
        cp.generate_checker_prompts(tokenizer, "5B")
    with pytest.raises(ValueError, match=r"unknown checker object\(s\) \['ast__Assign'\]"):
        cp.generate_checker_prompts(tokenizer, "11B", objects=["ast__Assign", "ast__For"])
    with pytest.raises(ValueError, match="unknown checker object 'builtin__abs'"):
        cp.concept_absent("x = 1", "builtin__abs")
    with pytest.raises(ValueError, match="n_target must be >= 1"):
        cp.raw_candidates("5A", n_target=0)
    with pytest.raises(ValueError, match="unknown candidate categor"):
        cp.select_prompts([("F_other", "x")])
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(layout.AtlasFileError, match="existing file"):
        cp.make_checker_prompts(not_a_dir, tokenizer, "11B", objects=["ast__For"])


def test_tokenizer_training_is_deterministic(tokenizer):
    again = models.train_mini_tokenizer(_texts(), vocab_size=2048)
    assert again.get_vocab() == tokenizer.get_vocab()
    sample = cp.raw_candidates("11B")[0][3]
    assert again.encode(sample) == tokenizer.encode(sample)


def test_cli(tmp_path, tokenizer):
    script = REPO / "scripts" / "make_checker_prompts.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               check=True).stdout
    for option in ("data_dir", "--variant", "--model", "--n-target", "--seed", "--objects"):
        assert option in help_text
    model_dir = tmp_path / "tok"
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "raw"
    run = subprocess.run([sys.executable, str(script), str(out), "--model", str(model_dir), "--n-target", "10",
                          "--objects", "ast__Import", "builtin__len"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name in (layout.CHECKER_PROMPTS, layout.TOKEN_CHECKER_PROMPTS):
        table = layout.read_table(out / name)
        assert sorted(table["object"].unique()) == ["ast__Import", "builtin__len"]
    # The CLI's tokenizer (loaded from disk) validates exactly like the in-memory one.
    expected, _ = cp.generate_checker_prompts(tokenizer, "11B", n_target=10, objects=["ast__Import", "builtin__len"])
    pd.testing.assert_frame_equal(layout.read_table(out / layout.CHECKER_PROMPTS), expected, check_dtype=False)
    bad = subprocess.run([sys.executable, str(script), str(out), "--model", str(model_dir), "--variant", "6C"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
