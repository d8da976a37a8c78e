"""Stages 11B and 5A — checker prompts: a concept's keyword token *without* the concept.

For each of the 58 keyword concepts (`concepts.KEYWORD_MAP`) we write small Python
snippets that contain the keyword as a token — in a string, a comment, an identifier,
a dict key or a print message — while their parse tree lacks the concept
(ALGORITHMS.md §3, §4). Masks extracted from these prompts measure how much of a
concept's circuit fires on the token alone.

One algorithm, two variants that the release generated independently:
  11B -> 11B_checker_prompts.parquet    (feeds stages 13/14 at all nine (ε, C) settings)
  5A  -> token_checker_prompts.parquet  (feeds token_checker_masks.h5 and the 5B comparison)
They differ only in C_identifier: 5A adds a list-comprehension template, so its RNG
stream departs from 11B's at the first C_identifier draw.

Pipeline:  raw_candidates  (RNG, no tokenizer)
        -> parses / concept_absent / keyword_token_present  (tokenizer, no RNG)
        -> select_prompts  (first n/5 valid per category A..E, then fill in raw order)
"""

from __future__ import annotations

import ast
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from builder_utils import layout
from builder_utils.concepts import KEYWORD_MAP

# ----------------------------------------------------------------------------- parameters

N_TARGET = 50           # prompts kept per object
OVERSHOOT_FACTOR = 3    # raw candidates generated per category = N_TARGET * 3 // 5 = 30
SEED = 42

CATEGORIES: tuple[str, ...] = ("A_string", "B_comment", "C_identifier", "D_dictkey", "E_print")

CHECKER_STATS = layout.CHECKER_PROMPT_STATS
TOKEN_CHECKER_STATS = layout.TOKEN_CHECKER_PROMPT_STATS

# ----------------------------------------------------------------------------- data (from the release notebooks)

# Identifiers that contain the keyword as a substring without being it (11B NB[5] = 5A NB[6]).
# "from" has no entry, so ast__ImportFrom gets no C_identifier candidates. Five entries do not
# contain their keyword at all (continuous_mode, continuum, width_value, tyranny, annex_id): kept as
# released; their C prompts simply fail the token check.
IDENTIFIER_VARIANTS: dict[str, tuple[str, ...]] = {
    "import": ("important_data", "reimport_flag", "import_path_str"),
    "break": ("breakdown_count", "breakpoint_flag", "unbreakable"),
    "pass": ("passport_number", "password_hash", "bypass_mode"),
    "continue": ("continuous_mode", "discontinue_flag", "continuum"),
    "for": ("format_string", "information", "formula_result", "before_update"),
    "if": ("notification", "verification", "modification", "amplifier"),
    "while": ("meanwhile_flag", "worthwhile", "awhile_counter"),
    "return": ("return_value_str", "unreturnable", "return_label"),
    "assert": ("assertive_mode", "reassert_count"),
    "with": ("width_value", "withdraw_amount", "within_range"),
    "class": ("classification", "classic_mode", "subclass_name"),
    "def": ("default_value", "undefined_flag", "defiant_mode", "defense_level"),
    "yield": ("yielded_count", "unyielding"),
    "try": ("retry_count", "country_code", "entry_point"),
    "raise": ("raised_flag", "fundraise_total", "praise_count"),
    "del": ("delivery_date", "delta_value", "model_name", "delegate_to"),
    "global": ("global_str_ref", "globalization"),
    "nonlocal": ("nonlocal_ref_str",),
    "lambda": ("lambda_str_ref",),
    "async": ("async_str_label",),
    "list": ("checklist_items", "listing_data", "blacklist_mode"),
    "set": ("settings_config", "reset_flag", "offset_value", "sunset_time"),
    "map": ("mapped_result", "roadmap_items", "bitmap_size"),
    "dict": ("dictionary_words", "verdict_text", "dictation_mode"),
    "open": ("opening_hours", "reopening", "openly_shared"),
    "type": ("typewriter_mode", "archetype", "prototype_id"),
    "print": ("printable_chars", "fingerprint_id", "blueprint_ref"),
    "int": ("interval_ms", "painting_id", "intelligence", "pointer_val"),
    "float": ("floating_label", "afloat_status"),
    "str": ("string_data", "stream_id", "structure_type", "destroy_flag"),
    "range": ("arrangement", "strange_value", "orange_count"),
    "sum": ("summary_text", "consumer_id", "assumption"),
    "max": ("maximum_str", "climax_point"),
    "min": ("minimum_str", "admin_level", "minute_count", "dominion"),
    "len": ("length_str", "lender_id", "silent_mode", "calendar_ref"),
    "hash": ("hashtag_count", "rehash_data"),
    "bool": ("boolean_str", "booleanize"),
    "round": ("roundup_notes", "background_val", "surround_count"),
    "zip": ("zipcode_val", "unzip_path"),
    "all": ("alliance_name", "install_path", "wallpaper"),
    "any": ("company_name", "many_items", "tyranny"),
    "next": ("next_str_ref", "annex_id"),
    "input": ("input_str_ref",),
    "filter": ("filter_str_ref", "unfiltered_data"),
    "object": ("objection_text", "objective_id"),
    "id": ("idea_count", "identity_str", "video_ref", "oxide_level"),
    "super": ("supervisor_name", "superfluous"),
    "iter": ("literal_count", "iterator_str_ref"),
    "bytes": ("bytes_str_ref", "gigabytes_val"),
    "sorted": ("sorted_str_ref", "unsorted_data"),
    "tuple": ("tuple_str_ref", "quintuple_val"),
    "property": ("property_str_ref",),
    "complex": ("complexity_score", "complex_str_ref"),
    "reversed": ("reversed_str_ref",),
}

KEYWORDS: frozenset[str] = frozenset(v["keyword"] for v in KEYWORD_MAP.values())

# The release's 34 variable names. A name containing any keyword would smuggle that keyword's
# token into other objects' prompts, so those are dropped (entry/try, offset/set, width_val/with,id),
# keeping the release order: 31 remain.
_VAR_NAME_BANK = (
    "data", "result", "value", "item", "record", "entry", "output",
    "signal", "status", "config", "mode", "level", "target", "source",
    "handler", "token", "state", "buffer", "counter", "index",
    "offset", "block", "phase", "cycle", "frame", "chunk", "batch",
    "queue", "score", "label", "flag", "limit", "depth", "width_val",
)
VAR_NAMES: tuple[str, ...] = tuple(v for v in _VAR_NAME_BANK if not any(kw in v for kw in KEYWORDS))

STRING_WORDS: tuple[str, ...] = (
    "waiting", "ready", "starting", "completed", "processing",
    "running", "loading", "checking", "updating", "building",
    "reading", "writing", "sending", "receiving", "tracking",
    "reference", "documentation", "deployment", "production",
    "analysis", "operation", "execution", "validation", "review",
    "schedule", "planning", "progress", "workflow", "pipeline",
    "resource", "component", "structure", "algorithm", "protocol",
    "standard", "baseline", "threshold", "interval", "duration",
    "capacity", "frequency", "priority", "sequence", "pattern",
    "segment", "fragment", "section", "portion", "division",
)

# Plain text substitution, no re-indentation (as released): a two-line snippet inside an
# indented wrapper does not parse and is rejected by validation.
SNIPPET = "{snippet}"
CONTEXT_WRAPPERS: tuple[str, ...] = (
    "{snippet}",
    "x = 1\n{snippet}\ny = 2",
    "data = []\n{snippet}\nresult = None",
    "def func():\n    {snippet}\n    return None",
    "def process():\n    {snippet}",
    "class Obj:\n    def method(self):\n        {snippet}",
)

# Category templates, as str.format templates over kw, w1, w2, v1 (and ident for C).
A_TEMPLATES: tuple[str, ...] = (
    '{v1} = "waiting {kw} {w1}"',
    '{v1} = "{w1} {kw} {w2} reference"',
    '{v1} = "the {kw} of {w1}"',
    '{v1} = "no {kw} needed for {w1}"',
    '{v1} = "{w1} {kw} {w2}"',
)
B_TEMPLATES: tuple[str, ...] = (
    "{v1} = 42  # {kw} {w1} see docs",
    "# {kw} {w1} {w2} reference\n{v1} = 10",
    "{v1} = []  # TODO {kw} this later",
    "# note: {kw} not needed for {w1}\n{v1} = True",
)
C_TEMPLATES_11B: tuple[str, ...] = (
    "{ident} = 42",
    '{ident} = "{w1}"',
    "{ident} = True",
)
C_LISTCOMP = "{ident} = [{v1} for {v1} in []]"
# A list comprehension is itself a For-family node, so for ast__For's keyword the slot falls back
# to a plain assignment. The slot stays, so the draw is still a choice among four.
C_LISTCOMP_FOR_FALLBACK = "{ident} = 42"
C_TEMPLATES_5A: tuple[str, ...] = (
    "{ident} = 42",
    '{ident} = "{w1}"',
    C_LISTCOMP,
    "{ident} = True",
)
D_TEMPLATES: tuple[str, ...] = (
    '{v1} = {{"{kw}": True, "{w1}": 42}}',
    '{v1} = {{"{w1}": 10, "mode": "{kw}"}}',
    '{v1} = {{"action": "{w1}", "{kw}": "{w2}"}}',
)
E_TEMPLATES: tuple[str, ...] = (
    'print("{w1} {kw} {w2}")',
    'print("starting {kw} {w1}")',
    'print("{kw} completed for {w1}")',
)


@dataclass(frozen=True)
class Variant:
    """What distinguishes 11B from 5A: the C_identifier templates and the output names."""

    name: str
    c_templates: tuple[str, ...]
    prompts_file: str
    stats_file: str

    def c_templates_for(self, keyword: str) -> tuple[str, ...]:
        if keyword != "for":
            return self.c_templates
        return tuple(C_LISTCOMP_FOR_FALLBACK if t == C_LISTCOMP else t for t in self.c_templates)


VARIANTS: dict[str, Variant] = {
    "11B": Variant("11B", C_TEMPLATES_11B, layout.CHECKER_PROMPTS, CHECKER_STATS),
    "5A": Variant("5A", C_TEMPLATES_5A, layout.TOKEN_CHECKER_PROMPTS, TOKEN_CHECKER_STATS),
}


def get_variant(variant: str | Variant) -> Variant:
    if isinstance(variant, Variant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown checker-prompt variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def _check_objects(objects: Iterable[str] | None) -> list[str]:
    if objects is None:
        return sorted(KEYWORD_MAP)
    objects = sorted({objects} if isinstance(objects, str) else set(objects))
    unknown = [o for o in objects if o not in KEYWORD_MAP]
    if unknown:
        raise ValueError(f"unknown checker object(s) {unknown}: not keys of concepts.KEYWORD_MAP "
                         f"(expected e.g. 'ast__Import' or 'builtin__len')")
    if not objects:
        raise ValueError("no objects requested")
    return objects


# ----------------------------------------------------------------------------- raw candidates (RNG only)


def _object_candidates(rng: random.Random, keyword: str, variant: Variant,
                       n_iterations: int) -> list[tuple[str, str]]:
    """(category, text) for one object. The draw order is the release's and must not change:
    3 words, 2 variable names, the wrapper, then A, B, C (ident, template; only if the keyword
    has variants), D, E."""
    idents = IDENTIFIER_VARIANTS.get(keyword, ())
    c_templates = variant.c_templates_for(keyword)
    out = []
    for _ in range(n_iterations):
        w1, w2, _w3 = rng.sample(STRING_WORDS, 3)   # w3 is unused but drawn: it moves the stream
        v1, _v2 = rng.sample(VAR_NAMES, 2)
        wrapper = rng.choice(CONTEXT_WRAPPERS)      # shared by the categories of this iteration
        fields = {"kw": keyword, "w1": w1, "w2": w2, "v1": v1}

        snippets = [("A_string", rng.choice(A_TEMPLATES).format(**fields)),
                    ("B_comment", rng.choice(B_TEMPLATES).format(**fields))]
        if idents:
            ident = rng.choice(idents)
            snippets.append(("C_identifier", rng.choice(c_templates).format(ident=ident, **fields)))
        snippets.append(("D_dictkey", rng.choice(D_TEMPLATES).format(**fields)))
        snippets.append(("E_print", rng.choice(E_TEMPLATES).format(**fields)))

        out += [(category, wrapper.replace(SNIPPET, s)) for category, s in snippets]
    return out


def raw_candidates(variant: str | Variant = "11B", *, n_target: int = N_TARGET,
                   seed: int = SEED) -> list[tuple[str, str, str, str]]:
    """Every candidate of every object, before validation: (object, keyword, category, text).

    Objects run in sorted(KEYWORD_MAP) order on ONE private RNG stream (seeded once), with
    n_target * OVERSHOOT_FACTOR // 5 iterations each. Validation consumes no randomness, so these
    texts do not depend on the tokenizer: the mini tokenizer can be trained on them, and any
    tokenizer then validates the very same candidates.
    """
    spec = get_variant(variant)
    if n_target < 1:
        raise ValueError(f"n_target must be >= 1, got {n_target}")
    rng = random.Random(seed)
    n_iterations = n_target * OVERSHOOT_FACTOR // len(CATEGORIES)
    rows = []
    for obj in sorted(KEYWORD_MAP):
        keyword = KEYWORD_MAP[obj]["keyword"]
        rows += [(obj, keyword, cat, text) for cat, text in _object_candidates(rng, keyword, spec, n_iterations)]
    return rows


# ----------------------------------------------------------------------------- validity checks (no RNG)


def _parse(text: str) -> ast.AST | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):    # ValueError: source with NUL bytes
        return None


def parses(text: str) -> bool:
    """Check 1: the prompt is valid Python."""
    return _parse(text) is not None


def _forbidden(obj: str) -> tuple[set[str], set[str]]:
    if obj not in KEYWORD_MAP:
        raise ValueError(f"unknown checker object {obj!r}: not a key of concepts.KEYWORD_MAP")
    info = KEYWORD_MAP[obj]
    return set(info["forbidden_nodes"]), set(info.get("forbidden_names", ()))


def concept_absent(text: str, obj: str) -> bool:
    """Check 2: no forbidden node type anywhere in the tree and, for a builtin, no call `name(...)`.

    Bare references (`x = len`) and attributes (`a.len()`) are allowed. Unparsable text is not
    a valid checker prompt, so it returns False.
    """
    nodes, names = _forbidden(obj)
    tree = _parse(text)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if type(node).__name__ in nodes:
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            return False
    return True


class _KeywordFinder:
    """`keyword_token_present` for one tokenizer, with keyword encodings and single-token decodes memoised."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._keyword_ids: dict[str, list[int]] = {}
        self._decoded: dict[int, str] = {}

    def keyword_ids(self, keyword: str) -> list[int]:
        if keyword not in self._keyword_ids:
            ids = list(self.tokenizer.encode(keyword, add_special_tokens=False))
            if not ids:
                raise ValueError(f"the tokenizer encodes keyword {keyword!r} to no tokens")
            self._keyword_ids[keyword] = ids
        return self._keyword_ids[keyword]

    def decoded(self, token_id: int) -> str:
        if token_id not in self._decoded:
            self._decoded[token_id] = self.tokenizer.decode([token_id]).strip()
        return self._decoded[token_id]

    def __call__(self, text: str, keyword: str) -> bool:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        kw = self.keyword_ids(keyword)
        k = len(kw)
        # The bare keyword's ids as a contiguous run (a keyword split into several tokens counts) ...
        if any(ids[i:i + k] == kw for i in range(len(ids) - k + 1)):
            return True
        # ... or one token that is the keyword up to whitespace (e.g. a space-prefixed " import").
        return any(self.decoded(t) == keyword for t in ids)


def keyword_token_present(text: str, keyword: str, tokenizer) -> bool:
    """Check 3: the model sees the keyword as token(s) in `text` (encoded without special tokens).

    True if the bare keyword's token ids occur as a contiguous subsequence of the text's ids,
    or if any single token decodes, stripped of whitespace, to exactly the keyword.
    """
    return _KeywordFinder(tokenizer)(text, keyword)


def _first_failed_check(text: str, obj: str, keyword: str, finder: _KeywordFinder) -> str | None:
    if not parses(text):
        return "unparsable"
    if not concept_absent(text, obj):
        return "concept_present"
    if not finder(text, keyword):
        return "token_missing"
    return None


# ----------------------------------------------------------------------------- selection


def select_prompts(valid: Sequence[tuple[str, str]], n_target: int = N_TARGET) -> list[str]:
    """Pick up to n_target texts from valid (category, text) candidates given in raw order.

    First the first n_target // 5 of each category, in the order A..E; if that is short,
    fill with the remaining valid texts in raw order (a text already selected is skipped,
    by text equality), and cut to n_target.
    """
    unknown = {c for c, _ in valid} - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown candidate categor(y/ies) {sorted(unknown)}; expected {list(CATEGORIES)}")
    per_category = n_target // len(CATEGORIES)
    selected = []
    for category in CATEGORIES:
        selected += [t for c, t in valid if c == category][:per_category]
    if len(selected) < n_target:
        taken = set(selected)
        selected += [t for _, t in valid if t not in taken][:n_target - len(selected)]
    return selected[:n_target]


# ----------------------------------------------------------------------------- the stage


def prompts_for_object(candidates: Sequence[tuple[str, str]], obj: str, tokenizer,
                       n_target: int = N_TARGET) -> tuple[list[str], dict]:
    """Validate one object's (category, text) candidates (raw order) and select its prompts.

    Returns (selected texts, counts): n_raw, n_unparsable, n_concept_present, n_token_missing
    (each candidate counted under the first check it fails), n_passed, n_valid (= selected).
    """
    finder = tokenizer if isinstance(tokenizer, _KeywordFinder) else _KeywordFinder(tokenizer)
    _forbidden(obj)     # a clear error for an unknown object, before any work
    keyword = KEYWORD_MAP[obj]["keyword"]
    failures = {"unparsable": 0, "concept_present": 0, "token_missing": 0}
    valid = []
    for category, text in candidates:
        failed = _first_failed_check(text, obj, keyword, finder)
        if failed is None:
            valid.append((category, text))
        else:
            failures[failed] += 1
    chosen = select_prompts(valid, n_target)
    counts = {"n_raw": len(candidates), **{f"n_{k}": v for k, v in failures.items()},
              "n_passed": len(valid), "n_valid": len(chosen)}
    return chosen, counts


def generate_checker_prompts(tokenizer, variant: str | Variant = "11B", *, n_target: int = N_TARGET,
                             seed: int = SEED, objects: Iterable[str] | None = None,
                             progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Checker prompts for `objects` (default: all 58), validated under `tokenizer`.

    Candidates are always generated for all objects and then subset, so an object's prompts
    are the same whether or not other objects are requested (the RNG stream is shared).

    Returns (table, stats). The table has layout.CHECKER_PROMPT_COLUMNS, rows in sorted object
    order then variation_id (0..n-1, selection order). stats = {
      "variant", "n_target", "seed", "n_prompts",
      "n_valid": {object: prompts kept},          # what token_checker_masks.h5 /generation_stats records
      "short_objects": [objects with fewer than n_target],
      "objects": {object: {keyword, n_raw, n_unparsable, n_concept_present, n_token_missing,
                           n_passed (all three checks), n_valid, short}}}
    """
    spec = get_variant(variant)
    wanted = _check_objects(objects)
    by_object: dict[str, list[tuple[str, str]]] = {}
    for obj, _kw, category, text in raw_candidates(spec, n_target=n_target, seed=seed):
        by_object.setdefault(obj, []).append((category, text))

    # Validation below draws no random numbers, so the candidates (and hence the RNG stream) are the
    # same under every tokenizer; only which of them pass depends on it.
    finder = _KeywordFinder(tokenizer)      # shared, so keyword encodings and decodes are memoised once
    rows, per_object = [], {}
    for obj in tqdm(wanted, desc=f"{spec.name} checker prompts", disable=not progress):
        keyword = KEYWORD_MAP[obj]["keyword"]
        chosen, counts = prompts_for_object(by_object[obj], obj, finder, n_target)
        rows += [(obj, keyword, i, text) for i, text in enumerate(chosen)]
        per_object[obj] = {"keyword": keyword, **counts, "short": len(chosen) < n_target}

    table = pd.DataFrame(rows, columns=layout.CHECKER_PROMPT_COLUMNS).astype({"variation_id": "int64"})
    stats = {
        "variant": spec.name, "n_target": n_target, "seed": seed, "n_prompts": len(rows),
        "n_valid": {o: s["n_valid"] for o, s in per_object.items()},
        "short_objects": [o for o, s in per_object.items() if s["short"]],
        "objects": per_object,
    }
    return table, stats


def make_checker_prompts(out_dir: os.PathLike | str, tokenizer, variant: str | Variant = "11B",
                         **kwargs) -> Path:
    """Write the variant's prompt table (`11B_checker_prompts.parquet` or `token_checker_prompts.parquet`)
    and its stats JSON beside it, both atomically. Returns the table's path.

    kwargs go to generate_checker_prompts (n_target, seed, objects, progress).
    """
    spec = get_variant(variant)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise layout.AtlasFileError(out_dir, "output directory is an existing file")
    table, stats = generate_checker_prompts(tokenizer, spec, **kwargs)
    path = out_dir / spec.prompts_file
    layout.write_table(table, path)
    with layout.atomic_output(out_dir / spec.stats_file) as tmp:
        tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return path
