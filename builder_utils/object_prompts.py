"""Stage 11A — object prompts: the (AST node × builtin) grid, 50 prompts per pair, a loss filter.

Three steps, each a plain function (ALGORITHMS.md §1):

1. `build_concept_matrix`   the sparse compatibility grid: 1,297 (AST node, builtin) pairs over
                            43 AST nodes × 63 "builtins" (62 real ones + the `_isolated_` sentinel).
2. `generate_candidates`    template prompts per pair, replaying the release's `random` stream
                            exactly (seed 42, the notebook's smoke-test draws first), canonicalised
                            by `ast.parse` → `ast.unparse`.
3. `score_prompts` +        the model's mean next-token loss per prompt; a pair whose mean loss is
   `filter_pairs`           above the threshold is dropped ("catastrophic"), the others keep their
                            first `n_keep` prompts in generation order (no sorting by loss).

`make_object_prompts` runs the three and writes `11A_object_prompts.parquet` and `11A_object_stats.json`.

The RNG stream is one sequence over the whole matrix, so generating a *subset* of pairs gives other
texts than the release. To get the release's texts for a subset, generate the full matrix and select
(`release_candidates` does exactly that, cached).

Loss threshold: the paper used 3.0 nats with `openai/circuit-sparsity`, which dropped 21 of 1,297
pairs. A random-init model scores every prompt near ln(vocab) ≈ 7.6 nats, so 3.0 would drop every
pair. For such models pass the rule `"drop_worst:K"`: the threshold is set just below the K-th highest
pair mean loss, so the K worst pairs are dropped and reported like the paper's catastrophic pairs
(`"drop_worst:21"` gives the release's count, 1,297 → 1,276, not its pairs). The filter is never
switched off.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import json
import math
import os
import textwrap
from pathlib import Path
from random import Random
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from builder_utils import layout
from builder_utils.concepts import AST_NODES, ISOLATED, REAL_BUILTINS

# ----------------------------------------------------------------------------- release parameters

RUN_NAME = "11A_object"
N_GENERATE = 50                 # candidates per pair (small mode)
N_KEEP = 50                     # kept per pair: all of them, so the filter only drops whole pairs
SEED = 42
LOSS_THRESHOLD = 3.0            # nats; a pair whose MEAN loss is strictly above it is dropped
MAX_LENGTH = 512                # tokenizer truncation of the scorer
SHORT_PROMPT_LOSS = 50.0        # a prompt of < 2 tokens has nothing to predict; the release scored it 50
SCORE_CHECKPOINT_EVERY = 4096   # prompts scored between two resume checkpoints
CANDIDATE_COLUMNS = ["ast_node", "builtin_obj", "variation_id", "prompt_text", "ast_verified", "domain", "wrapper"]

# The notebook's generator smoke test (NB[9]) drew from the same stream before the main loop.
SMOKE_TEST_PAIRS = (("For", "list"), ("Try", "ValueError"), ("Pass", ISOLATED))
SMOKE_TEST_N = 3

# ----------------------------------------------------------------------------- data: the variance schema (NB[6])

DOMAINS: dict[str, dict[str, dict[str, str]]] = {
    "finance": {
        "var_names": {
            "list": "ledger_entries", "dict": "account_records",
            "item": "transaction", "func": "audit_record",
            "class": "PortfolioManager", "method": "calculate_returns",
            "value": "balance", "key": "ticker",
        },
        "mock_data": {
            "list": "[1050.50, -20.00, 400.25, 88.10]",
            "dict": "{'ticker': 'AAPL', 'shares': 150, 'price': 178.50}",
            "int": "42500", "str": "'USD-2024-Q3-REPORT'",
            "float": "3.75", "set": "{'NYSE', 'NASDAQ', 'LSE'}",
            "tuple": "('BUY', 150, 178.50)", "bool": "True",
        },
    },
    "biology": {
        "var_names": {
            "list": "dna_samples", "dict": "genome_annotations",
            "item": "genome_sequence", "func": "analyze_genome",
            "class": "SequenceAnalyzer", "method": "run_alignment",
            "value": "mutation_rate", "key": "gene_id",
        },
        "mock_data": {
            "list": "['ACTG', 'GCTA', 'CGAT', 'TTAC']",
            "dict": "{'gene': 'BRCA1', 'chromosome': 17, 'position': 43044295}",
            "int": "43044295", "str": "'BRCA1-VARIANT-P53'",
            "float": "0.95", "set": "{'adenine', 'thymine', 'guanine'}",
            "tuple": "('chr17', 43044295, 43125483)", "bool": "False",
        },
    },
    "gaming": {
        "var_names": {
            "list": "player_scores", "dict": "character_stats",
            "item": "player_entry", "func": "update_leaderboard",
            "class": "GameEngine", "method": "spawn_entity",
            "value": "hit_points", "key": "player_id",
        },
        "mock_data": {
            "list": "[9500, 8700, 12400, 6300]",
            "dict": "{'health': 100, 'mana': 50, 'attack': 25}",
            "int": "9500", "str": "'LEVEL_42_BOSS'",
            "float": "1.5", "set": "{'warrior', 'mage', 'rogue'}",
            "tuple": "('dragon', 5000, 'fire')", "bool": "True",
        },
    },
    "physics": {
        "var_names": {
            "list": "measurements", "dict": "particle_data",
            "item": "reading", "func": "compute_trajectory",
            "class": "SimulationRunner", "method": "step_forward",
            "value": "velocity", "key": "particle_id",
        },
        "mock_data": {
            "list": "[9.81, 3.0e8, 6.674e-11, 1.602e-19]",
            "dict": "{'mass': 1.67e-27, 'charge': 1.6e-19, 'spin': 0.5}",
            "int": "299792458", "str": "'MUON_DECAY_EVENT'",
            "float": "9.81", "set": "{'proton', 'neutron', 'electron'}",
            "tuple": "(0.0, 9.81, -3.2)", "bool": "False",
        },
    },
    "ecommerce": {
        "var_names": {
            "list": "shopping_cart", "dict": "product_catalog",
            "item": "order_item", "func": "process_checkout",
            "class": "OrderProcessor", "method": "apply_discount",
            "value": "total_price", "key": "sku",
        },
        "mock_data": {
            "list": "[29.99, 15.50, 89.00, 4.99]",
            "dict": "{'sku': 'WDG-4420', 'price': 29.99, 'stock': 142}",
            "int": "142", "str": "'ORDER-2024-XK9001'",
            "float": "29.99", "set": "{'shipped', 'pending', 'delivered'}",
            "tuple": "('WDG-4420', 29.99, 3)", "bool": "True",
        },
    },
}
DOMAIN_KEYS = list(DOMAINS)     # prompt i of a pair uses domain i % 5

WRAPPERS = ["global", "function", "method"]
WRAPPER_WEIGHTS = [0.40, 0.30, 0.30]
PADDING_BEFORE = ["", "result = None", "print('Starting process')", "status = True", "counter = 0"]
PADDING_AFTER = ["", "print('Done')", "status = False", "counter += 1", "result = None"]

# ----------------------------------------------------------------------------- data: the concept families (NB[7])

AST_FAMILIES: dict[str, list[str]] = {
    "iteration": ["For", "While", "AsyncFor", "ListComp", "SetComp", "DictComp", "GeneratorExp"],
    "exception": ["Try", "Raise", "ExceptHandler"],
    "callable": ["FunctionDef", "AsyncFunctionDef", "Return", "Call", "Lambda", "Yield", "YieldFrom"],
    "class": ["ClassDef"],
    "assignment": ["Assign", "AugAssign", "AnnAssign", "Delete", "Global", "Nonlocal"],
    "conditional": ["If", "IfExp"],
    "operator": ["BinOp", "BoolOp", "UnaryOp", "Compare"],
    "structural": ["With", "AsyncWith"],
    "import": ["Import", "ImportFrom"],
    "access": ["Attribute", "Subscript", "Starred", "Slice"],
    "literal": ["Dict", "Set"],
    "isolated": ["Pass", "Break", "Continue", "Assert"],
}

BUILTIN_FAMILIES: dict[str, list[str]] = {
    "iterables": ["list", "tuple", "set", "frozenset", "dict", "str", "bytes", "bytearray", "range", "memoryview"],
    "numerics": ["int", "float", "complex", "bool"],
    "callables": ["print", "len", "range", "enumerate", "zip", "map", "filter", "sorted", "reversed", "min", "max",
                  "sum", "abs", "round", "any", "all", "isinstance", "issubclass", "hasattr", "getattr", "setattr",
                  "delattr", "callable", "iter", "next", "hash", "id", "repr", "input", "open", "super",
                  "property", "staticmethod", "classmethod", "vars", "dir", "type", "object"],
    "exceptions": ["Exception", "ValueError", "TypeError", "KeyError", "IndexError", "AttributeError",
                   "RuntimeError", "StopIteration", "FileNotFoundError", "OSError", "ImportError",
                   "NotImplementedError", "ZeroDivisionError", "NameError", "OverflowError", "MemoryError",
                   "RecursionError", "ArithmeticError", "LookupError"],
    "types": ["int", "float", "str", "bool", "list", "dict", "tuple", "set", "bytes", "type", "object", "complex"],
}

# Which builtin families each AST family pairs with; an empty list means the sentinel pair (node, _isolated_).
# The dict order fixes the pair order of the matrix.
COMPATIBILITY: dict[str, list[str]] = {
    "iteration": ["iterables"],
    "exception": ["exceptions"],
    "callable": ["callables", "types", "iterables", "numerics"],
    "class": ["callables", "types", "iterables", "numerics", "exceptions"],
    "assignment": ["iterables", "numerics", "types", "callables"],
    "conditional": ["iterables", "numerics", "types", "exceptions", "callables"],
    "operator": ["numerics", "iterables"],
    "structural": ["callables", "types"],
    "import": [],
    "access": ["iterables", "types", "callables"],
    "literal": ["iterables", "numerics"],
    "isolated": [],
}

# The notebook's "test" mode subset (its shipped default).
TEST_MODE_AST = {"For", "If", "ListComp", "Try", "FunctionDef"}
TEST_MODE_BUILTINS = {"list", "dict", "int", "ValueError", "range"}

# ----------------------------------------------------------------------------- data: essence templates (NB[9])
#
# str.format templates. Fields: the domain's variable names ({list} {dict} {item} {func} {class}
# {method} {value} {key}), {b} the builtin, {mock} the domain's mock value for the builtin (the list
# mock if it has none), {mock_int} {mock_list} {mock_dict} {mock_set} fixed mocks, and {iterable},
# a line binding {list} (or {dict}) to an iterable that suits the builtin (see _iterable_line).
# A pair of templates is chosen by a test on the builtin: (if it is an exception, otherwise) for
# Try/ExceptHandler/Raise, (if it is callable, otherwise) for FunctionDef/AnnAssign/Call.

_TRY_TEMPLATES = (
    "try:\n    {value} = {mock_int}\n    result = int({value})\nexcept {b} as e:\n    {func}(str(e))",
    "try:\n    result = {b}({mock_list})\nexcept Exception as e:\n    {func}(str(e))",
)

TEMPLATES_IF_EXCEPTION: dict[str, tuple[str, str]] = {
    "Try": _TRY_TEMPLATES,
    "ExceptHandler": _TRY_TEMPLATES,
    "Raise": (
        "if not isinstance({mock}, {b}):\n    raise {b}('Invalid: ' + str({mock}))",
        "{value} = {mock}\nif {value} is None:\n    raise ValueError(str({b}))",
    ),
}

TEMPLATES_IF_CALLABLE: dict[str, tuple[str, str]] = {
    "FunctionDef": (
        "def {func}({item}: {b}) -> {b}:\n    result = {b}({item})\n    return result",
        'def {func}({item}):\n    """Process using {b}."""\n    return str({item})',
    ),
    "AnnAssign": ("{value}: {b} = {mock}", "{value}: str = str({mock})"),
    "Call": ("result = {b}({mock})", "result = str({mock})"),
}

TEMPLATES: dict[str, str] = {
    "For": "{iterable}\nfor {item} in {list}:\n    {func}({item})",
    "While": "{value} = {mock_int}\nwhile {value} > 0:\n    {func}({value})\n    {value} -= 1",
    "AsyncFor": "async def _run():\n    {iterable}\n    async for {item} in {list}:\n        {func}({item})",
    "If": "{value} = {mock}\nif isinstance({value}, {b}):\n    {func}({value})\nelse:\n    pass",
    "IfExp": "{value} = {mock}\nresult = {func}({value}) if isinstance({value}, {b}) else None",
    "ListComp": "{iterable}\nresult = [{item} for {item} in {list}]",
    "DictComp": "{iterable}\nresult = {{str(k): k for k in {list}}}",
    "SetComp": "{iterable}\nresult = {{{item} for {item} in {list}}}",
    "GeneratorExp": "{iterable}\nresult = list({item} for {item} in {list})",
    "AsyncFunctionDef": "async def {func}({item}):\n    result = {b}({item}) if callable({b}) else str({item})\n"
                        "    return result",
    "ClassDef": "class {class}:\n    data_type = {b}\n    def __init__(self):\n        self.{value} = {mock}\n"
                "    def {method}(self):\n        return self.{value}",
    "Return": "def {func}():\n    {value} = {mock}\n    return {b}({value}) if callable({b}) else {value}",
    "Assign": "{value} = {mock}",
    "AugAssign": "{value} = {mock_int}\n{value} += 1",
    "Import": "import ast",
    "ImportFrom": "from collections import OrderedDict",
    "Break": "{iterable}\nfor {item} in {list}:\n    break",
    "Continue": "{iterable}\nfor {item} in {list}:\n    if {item}:\n        continue\n    {func}({item})",
    "Pass": "class {class}:\n    pass",
    "Delete": "{value} = {mock}\ndel {value}",
    "With": "class {class}:\n    def __enter__(self): return self\n    def __exit__(self, *a): pass\n"
            "with {class}() as ctx:\n    {value} = {mock}",
    "AsyncWith": "async def _run():\n    class {class}:\n        async def __aenter__(self): return self\n"
                 "        async def __aexit__(self, *a): pass\n    async with {class}() as ctx:\n"
                 "        {value} = {mock}",
    "Attribute": "{value} = {mock}\nresult = {value}.__class__.__name__",
    "Subscript": "{iterable}\nresult = {list}[0]",
    "Lambda": "transform = lambda x: {b}(x) if callable({b}) else x\nresult = transform({mock})",
    "BinOp": "{value} = {mock_int}\nresult = {value} + 1",
    "BoolOp": "{value} = {mock}\nresult = {value} and True",
    "UnaryOp": "{value} = {mock_int}\nresult = -{value}",
    "Compare": "{value} = {mock}\nresult = {value} == {mock}",
    "Assert": "{value} = {mock}\nassert {value} is not None",
    "Global": "{value} = {mock}\ndef {func}():\n    global {value}\n    {value} = {mock}",
    "Nonlocal": "def {func}_outer():\n    {value} = {mock}\n    def inner():\n        nonlocal {value}\n"
                "        {value} = {mock}\n    inner()",
    "Yield": "def {func}():\n    {iterable}\n    for {item} in {list}:\n        yield {item}",
    "YieldFrom": "def {func}():\n    {iterable}\n    yield from {list}",
    "Starred": "{iterable}\nfirst, *rest = {list}",
    "Slice": "{iterable}\nresult = {list}[1:3]",
    "Dict": "result = {mock_dict}",
    "Set": "result = {mock_set}",
}

# Nodes paired with the `_isolated_` sentinel: the essence does not mention a builtin.
ISOLATED_TEMPLATES: dict[str, str] = {
    "Pass": "class {class}:\n    pass",
    "Break": "for {item} in range(5):\n    break",
    "Continue": "for {item} in range(5):\n    if {item}:\n        continue",
    "Assert": "{value} = 1\nassert {value} is not None",
    "Import": "import ast",
    "ImportFrom": "from collections import OrderedDict",
}

# ----------------------------------------------------------------------------- 1. the concept matrix


def _ast_node_names() -> set[str]:
    """Concrete AST node classes of the running Python (the reference's `get_ast_nodes`, unfiltered)."""
    return {n for n in dir(ast) if not n.startswith("_") and isinstance(getattr(ast, n), type)
            and issubclass(getattr(ast, n), ast.AST)}


def _builtin_names() -> set[str]:
    return {n for n in dir(builtins) if not n.startswith("_")}


def build_concept_matrix(mode: str = "small") -> list[tuple[str, str]]:
    """The sparse (AST node, builtin) grid in the release's order (ALGORITHMS.md §1.2).

    For each AST family (COMPATIBILITY order), each member (family order), each builtin allowed by
    the compatible builtin families (code-point sorted): one pair; a family with no compatible
    builtins gets one `(node, "_isolated_")` pair per member.

    mode "small" (the release, default): 1,297 pairs over the 43 AST nodes × 63 builtins of
    `concepts`. It is filtered by that inventory alone, not by `dir(ast)`/`dir(builtins)`, so it
    does not depend on the Python version (on 3.11 and 3.12 both give the same grid).
    mode "full": every family member that exists in the running Python (1,390 pairs on 3.11/3.12).
    mode "test": the notebook's 5 × 5 subset.
    """
    if mode == "small":
        ast_ok, builtin_ok = set(AST_NODES), set(REAL_BUILTINS)
    elif mode == "full":
        ast_ok, builtin_ok = _ast_node_names(), _builtin_names()
    elif mode == "test":
        ast_ok, builtin_ok = TEST_MODE_AST & _ast_node_names(), TEST_MODE_BUILTINS & _builtin_names()
    else:
        raise ValueError(f"unknown concept matrix mode {mode!r}; use 'small' (the release), 'full' or 'test'")

    pairs: list[tuple[str, str]] = []
    for family, builtin_families in COMPATIBILITY.items():
        nodes = [n for n in AST_FAMILIES[family] if n in ast_ok]
        if not builtin_families:
            pairs += [(n, ISOLATED) for n in nodes]
            continue
        allowed = sorted(set().union(*(BUILTIN_FAMILIES[f] for f in builtin_families)) & builtin_ok)
        pairs += [(n, b) for n in nodes for b in allowed]
    return pairs


# ----------------------------------------------------------------------------- 2. the generator


def _is_exception(name: str) -> bool:
    obj = getattr(builtins, name, None)
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _is_callable(name: str) -> bool:
    return callable(getattr(builtins, name, None))


def _iterable_line(builtin: str, names: dict[str, str], mocks: dict[str, str]) -> str:
    """A line binding the domain's list (or dict) variable to an iterable that suits `builtin`."""
    if builtin in ("list", "tuple", "set", "frozenset"):
        return f"{names['list']} = {mocks['list']}"
    if builtin == "dict":
        return f"{names['dict']} = {mocks['dict']}"
    if builtin == "range":
        return f"{names['list']} = list(range(10))"
    if builtin == "str":
        return f"{names['list']} = list({mocks['str']})"
    if builtin == "int":
        return f"{names['list']} = list(range({mocks['int']} % 20))"
    if builtin in ("bytes", "bytearray"):
        return f"{names['list']} = list(b'hello')"
    return f"{names['list']} = [str({builtin}), str(type({builtin}))]"


def _template(ast_node: str, builtin: str) -> str | None:
    if builtin == ISOLATED:
        return ISOLATED_TEMPLATES.get(ast_node)
    if ast_node in TEMPLATES_IF_EXCEPTION:
        return TEMPLATES_IF_EXCEPTION[ast_node][0 if _is_exception(builtin) else 1]
    if ast_node in TEMPLATES_IF_CALLABLE:
        return TEMPLATES_IF_CALLABLE[ast_node][0 if _is_callable(builtin) else 1]
    return TEMPLATES.get(ast_node)


def build_essence(ast_node: str, builtin: str, domain: str) -> str | None:
    """The core snippet for one pair in one domain, before padding and wrapping; None if no template."""
    template = _template(ast_node, builtin)
    if template is None:
        return None
    names, mocks = DOMAINS[domain]["var_names"], DOMAINS[domain]["mock_data"]
    fields = dict(names, b=builtin, mock=mocks.get(builtin, mocks["list"]),
                  **{f"mock_{k}": mocks[k] for k in ("int", "list", "dict", "set")},
                  iterable=_iterable_line(builtin, names, mocks))
    return template.format_map(fields)


def _wrap(body: str, wrapper: str, names: dict[str, str]) -> str:
    if wrapper == "global":
        return body
    if wrapper == "function":
        return f"def {names['func']}_main():\n" + textwrap.indent(body, "    ")
    return f"class {names['class']}Main:\n    def {names['method']}_run(self):\n" + textwrap.indent(body, " " * 8)


def _generate_pair(rng: Random, ast_node: str, builtin: str, n: int) -> list[dict]:
    """Up to `n` prompts for one pair; each one with an essence costs 2 `choice` + 1 `choices` draws."""
    node_class = getattr(ast, ast_node, None)
    out = []
    for i in range(n):
        domain = DOMAIN_KEYS[i % len(DOMAIN_KEYS)]
        essence = build_essence(ast_node, builtin, domain)
        if essence is None:                       # before any draw: the stream is not advanced
            continue
        before, after = rng.choice(PADDING_BEFORE), rng.choice(PADDING_AFTER)
        wrapper = rng.choices(WRAPPERS, weights=WRAPPER_WEIGHTS, k=1)[0]
        body = "\n".join(p for p in (before, essence, after) if p)
        try:
            tree = ast.parse(_wrap(body, wrapper, DOMAINS[domain]["var_names"]))
        except (SyntaxError, ValueError):         # skipped after the draws, as in the release
            continue
        out.append({"prompt_text": ast.unparse(tree),
                    "ast_verified": any(isinstance(x, node_class) for x in ast.walk(tree)),
                    "domain": domain, "wrapper": wrapper})
    return out


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError("no (ast_node, builtin) pairs given")
    known_ast, known_builtins = _ast_node_names(), _builtin_names()
    seen = set()
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"a pair must be (ast_node, builtin), got {p!r}")
        a, b = p
        if a not in known_ast:
            raise ValueError(f"unknown AST node {a!r} in pair {p!r}: not a node class of the `ast` module")
        if b != ISOLATED and b not in known_builtins:
            raise ValueError(f"unknown builtin {b!r} in pair {p!r}: not in `builtins` and not {ISOLATED!r}")
        if p in seen:
            raise ValueError(f"pair {p!r} is listed twice")
        seen.add(p)
    return pairs


def generate_candidates(pairs: Sequence[tuple[str, str]] | None = None, n_generate: int = N_GENERATE,
                        seed: int = SEED) -> pd.DataFrame:
    """Candidate prompts for `pairs` (default: the full matrix), replaying the release's RNG stream.

    One `random.Random(seed)` (the same stream as the notebook's `random.seed(seed)`) first replays
    the notebook's smoke test (3 pairs × 3 prompts), then walks `pairs` in order, `n_generate` tries
    each. The texts equal the release's only for the full matrix in its order with n_generate=50 and
    seed=42; a subset (or another n) consumes the stream differently. For the release's texts of a
    subset use `release_candidates`.

    Returns one row per candidate: ast_node, builtin_obj, variation_id (index among the pair's
    candidates, generation order), prompt_text, ast_verified, and two descriptive columns that are
    not part of the release file: domain and wrapper. A real AST node with no template gives no rows
    (reported as an empty generation by `filter_pairs`); an unknown name is an error.
    """
    pairs = build_concept_matrix() if pairs is None else _check_pairs(pairs)
    if n_generate < 1:
        raise ValueError(f"n_generate must be >= 1, got {n_generate}")
    rng = Random(seed)
    for a, b in SMOKE_TEST_PAIRS:
        _generate_pair(rng, a, b, SMOKE_TEST_N)
    rows = []
    for a, b in pairs:
        for k, cand in enumerate(_generate_pair(rng, a, b, n_generate)):
            rows.append({"ast_node": a, "builtin_obj": b, "variation_id": k, **cand})
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    return df.astype({"variation_id": "int64", "ast_verified": "bool"})


@functools.lru_cache(maxsize=2)
def _release_stream(n_generate: int, seed: int) -> pd.DataFrame:
    return generate_candidates(None, n_generate=n_generate, seed=seed)


def release_candidates(pairs: Sequence[tuple[str, str]] | None = None, *, per_pair: int | None = None,
                       seed: int = SEED) -> pd.DataFrame:
    """The release's candidates (full-matrix stream, n_generate=50) for `pairs`, in the order of `pairs`.

    `per_pair` keeps only each pair's first candidates (the filter keeps the first ones too). The
    full-matrix generation (~65k prompts) is cached per process.
    """
    if per_pair is not None and not 1 <= per_pair <= N_GENERATE:
        raise ValueError(f"per_pair must be in 1..{N_GENERATE} (the release generated {N_GENERATE}), got {per_pair}")
    full = _release_stream(N_GENERATE, seed)
    if pairs is not None:
        pairs = _check_pairs(pairs)
        outside = sorted(set(pairs) - set(build_concept_matrix()))
        if outside:
            raise ValueError(f"pair(s) {outside[:3]} are not in the release matrix, so they have no release texts")
        order = {p: i for i, p in enumerate(pairs)}
        rank = pd.Series([order.get(p, -1) for p in zip(full.ast_node, full.builtin_obj)], index=full.index)
        full = full[rank >= 0].assign(_rank=rank).sort_values(["_rank", "variation_id"], kind="stable")
        full = full.drop(columns="_rank")
    if per_pair is not None:
        full = full[full.variation_id < per_pair]
    return full.reset_index(drop=True).copy()


# ----------------------------------------------------------------------------- 3. scoring and the filter


def score_prompts(model, tokenizer, texts: Iterable[str], *, batch_size: int = 32, device="cpu",
                  max_length: int = MAX_LENGTH, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean next-token cross-entropy (nats, fp32 logits) and token count of each text.

    Same definition as the release's one-prompt-per-forward scorer: tokens without special tokens,
    truncated to `max_length`; the loss is the mean over the T-1 predicted tokens; a text of fewer
    than 2 tokens scores SHORT_PROMPT_LOSS. Here prompts of similar length are batched, padded on the
    right: a causal model's logits at the real positions cannot see later (pad) positions, so no
    attention mask is needed (the circuit-sparsity forward takes none) and the result equals the
    unbatched one up to float rounding. The pad positions are left out of the loss.
    The model must already be on `device`; it is put in eval mode.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    texts = list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts:
        return np.zeros(0, np.float64), np.zeros(0, np.int64)
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    losses = np.full(len(texts), SHORT_PROMPT_LOSS, dtype=np.float64)
    order = sorted(np.flatnonzero(lengths >= 2).tolist(), key=lambda i: lengths[i])   # stable: deterministic
    # Any pad id gives the same losses (no real position can attend to a later one). 0 rather than the
    # tokenizer's pad token keeps transformers' "padded input without attention mask" warning quiet.
    pad_id = 0

    model.eval()
    with torch.inference_mode(), tqdm(total=len(order), desc="11A scoring", unit="prompt",
                                      disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            n = torch.as_tensor(lengths[rows], device=device)
            batch = torch.full((len(rows), int(n.max())), pad_id, dtype=torch.long)
            for r, i in enumerate(rows):
                batch[r, : lengths[i]] = torch.as_tensor(ids[i])
            batch = batch.to(device)
            logits = model(batch).logits[:, :-1].float()
            # Position t predicts token t+1; targets at or past a prompt's last real token are padding.
            is_pad = torch.arange(batch.shape[1] - 1, device=device)[None, :] >= n[:, None] - 1
            targets = batch[:, 1:].masked_fill(is_pad, -100)
            nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
            losses[rows] = (nll.double().sum(1) / (n - 1)).cpu().numpy()
            bar.update(len(rows))
    return losses, lengths


def parse_loss_threshold(rule: float | int | str) -> tuple[str, float]:
    """Check a threshold argument: ("fixed", value) for a finite number, ("drop_worst", K) for "drop_worst:K"."""
    if isinstance(rule, str) and rule.strip().startswith("drop_worst:"):
        k = rule.strip()[len("drop_worst:"):]
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"loss threshold rule {rule!r}: K must be an integer >= 1 (e.g. 'drop_worst:21')")
        return "drop_worst", int(k)
    if isinstance(rule, str):
        try:
            rule = float(rule)
        except ValueError:
            raise ValueError(f"loss threshold {rule!r} is neither a number nor 'drop_worst:K'") from None
    if isinstance(rule, bool) or not isinstance(rule, (int, float)) or not math.isfinite(rule):
        raise ValueError(f"loss threshold must be a finite number or 'drop_worst:K', got {rule!r}")
    return "fixed", float(rule)


def resolve_loss_threshold(rule: float | int | str, pair_means: Sequence[float]) -> float:
    """The numeric threshold of `rule` given the pairs' mean losses.

    "drop_worst:K" sets the threshold at the (K+1)-th highest pair mean loss, so with the strict
    `mean > threshold` test the K worst pairs are dropped (fewer if pair means tie at the boundary).
    """
    kind, value = parse_loss_threshold(rule)
    if kind == "fixed":
        return value
    k = int(value)
    if k >= len(pair_means):
        raise ValueError(f"loss threshold rule {rule!r} would drop all {len(pair_means)} scored pairs; "
                         f"K must be smaller than the number of pairs")
    return float(np.sort(np.asarray(pair_means, np.float64))[::-1][k])


def filter_pairs(candidates: pd.DataFrame, losses: Sequence[float], lengths: Sequence[int], *,
                 loss_threshold: float | str = LOSS_THRESHOLD, n_keep: int = N_KEEP,
                 pairs: Sequence[tuple[str, str]] | None = None, n_generate: int | None = None,
                 mode: str = "small") -> tuple[pd.DataFrame, dict]:
    """Drop the pairs whose mean loss is above the threshold; keep the others' first `n_keep` prompts.

    `losses`/`lengths` are aligned with the rows of `candidates`. A pair is catastrophic when the
    mean over ALL its candidates is strictly above the threshold (equal is kept). Kept prompts stay
    in generation order — no sorting by loss — and get variation_id 0..k-1. `pairs` is the list of
    pairs asked for (default: those in `candidates`, in order); one without candidates is reported
    as an empty generation. Returns the release table (layout.OBJECT_PROMPT_COLUMNS) and the stats
    of `11A_object_stats.json` (ALGORITHMS.md §1.5) plus the threshold used.
    """
    missing = [c for c in ("ast_node", "builtin_obj", "prompt_text", "ast_verified") if c not in candidates]
    if missing:
        raise ValueError(f"candidates lack column(s) {missing}")
    losses, lengths = np.asarray(losses, np.float64), np.asarray(lengths, np.int64)
    if not (len(losses) == len(lengths) == len(candidates)):
        raise ValueError(f"{len(candidates)} candidates but {len(losses)} losses and {len(lengths)} lengths")
    if n_keep < 1:
        raise ValueError(f"n_keep must be >= 1, got {n_keep}")
    cand = candidates.reset_index(drop=True).assign(sequence_loss=losses, token_length=lengths)
    keys = list(zip(cand.ast_node, cand.builtin_obj))
    present = list(dict.fromkeys(keys))
    pairs = present if pairs is None else [tuple(p) for p in pairs]
    if len(set(pairs)) != len(pairs):
        raise ValueError("`pairs` lists a pair twice")
    unknown = set(present) - set(pairs)
    if unknown:
        raise ValueError(f"candidates hold pair(s) not in `pairs`: {sorted(unknown)[:3]}")
    if not pairs:
        raise ValueError("no pairs to filter")

    groups = cand.groupby(["ast_node", "builtin_obj"], sort=False).indices
    means = {p: float(np.mean(losses[groups[p]])) for p in present}
    parse_loss_threshold(loss_threshold)
    threshold = resolve_loss_threshold(loss_threshold, list(means.values())) if means else None

    empty, catastrophic, kept = [], [], []
    for p in pairs:
        if p not in means:
            empty.append(list(p))
        elif means[p] > threshold:  # strict: a mean equal to the threshold is kept
            catastrophic.append(list(p))
        else:
            kept.append(groups[p][:n_keep])       # groupby indices are in row (= generation) order
    rows = cand.iloc[np.concatenate(kept)] if kept else cand.iloc[:0]
    out = pd.DataFrame({
        "ast_node": rows.ast_node.to_numpy(dtype=object),
        "builtin_obj": rows.builtin_obj.to_numpy(dtype=object),
        "variation_id": rows.groupby(["ast_node", "builtin_obj"], sort=False).cumcount().to_numpy(np.int64),
        "prompt_text": rows.prompt_text.to_numpy(dtype=object),
        "sequence_loss": rows.sequence_loss.to_numpy(np.float64),
        "token_length": rows.token_length.to_numpy(np.int64),
        "ast_verified": rows.ast_verified.to_numpy(bool),
    }, columns=layout.OBJECT_PROMPT_COLUMNS)
    out = out.astype({"ast_node": "str", "builtin_obj": "str", "prompt_text": "str"})

    counts = cand.groupby(["ast_node", "builtin_obj"], sort=False).size()
    stats = {
        "run_name": RUN_NAME, "mode": mode,
        "n_ast": len({a for a, _ in pairs}), "n_builtins": len({b for _, b in pairs}),
        "total_pairs": len(pairs),
        "n_generate": int(n_generate if n_generate is not None else (counts.max() if len(counts) else 0)),
        "n_keep": int(n_keep),
        "successful_pairs": len(kept), "failed_pairs": len(empty) + len(catastrophic),
        "empty_gen_pairs": empty, "catastrophic_pairs": catastrophic,
        "total_prompts": int(len(out)),
        "loss_threshold": threshold, "loss_threshold_rule": str(loss_threshold),
    }
    return out, stats


# ----------------------------------------------------------------------------- 4. the stage


def _model_fingerprint(model, tokenizer, texts: list[str], max_length: int) -> str:
    """Identifies a scoring job, so a resumed run never mixes scores of other texts or weights."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    params = list(model.parameters())
    weight_sum = sum(float(p.detach().double().sum()) for p in params)
    h.update(repr((type(model).__name__, getattr(getattr(model, "config", None), "_name_or_path", None),
                   sum(p.numel() for p in params), str(params[0].dtype) if params else None, weight_sum,
                   len(tokenizer), max_length)).encode())
    return h.hexdigest()


def _score_resumable(model, tokenizer, texts: list[str], checkpoint: Path, *, batch_size: int, device,
                     max_length: int, resume: bool) -> tuple[np.ndarray, np.ndarray]:
    """`score_prompts` in chunks, saving the scores so far after each chunk; picks up a matching checkpoint."""
    from tqdm.auto import tqdm

    fingerprint = _model_fingerprint(model, tokenizer, texts, max_length)
    losses, lengths, done = np.zeros(len(texts), np.float64), np.zeros(len(texts), np.int64), 0
    if resume and checkpoint.is_file():
        try:
            with np.load(checkpoint) as ck:
                if str(ck["fingerprint"]) == fingerprint:
                    done = int(ck["done"])
                    losses[:done], lengths[:done] = ck["losses"][:done], ck["lengths"][:done]
        except (OSError, KeyError, ValueError):   # a corrupt checkpoint is only lost time: start over
            done = 0
    with tqdm(total=len(texts), initial=done, desc="11A scoring", unit="prompt") as bar:
        while done < len(texts):
            end = min(done + SCORE_CHECKPOINT_EVERY, len(texts))
            losses[done:end], lengths[done:end] = score_prompts(
                model, tokenizer, texts[done:end], batch_size=batch_size, device=device,
                max_length=max_length, progress=False)
            bar.update(end - done)
            done = end
            if done < len(texts):
                with layout.atomic_output(checkpoint) as tmp, open(tmp, "wb") as f:
                    np.savez(f, fingerprint=fingerprint, done=done, losses=losses, lengths=lengths)
    return losses, lengths


def make_object_prompts(out_dir: str | os.PathLike, model, tokenizer, *,
                        pairs: Sequence[tuple[str, str]] | None = None, n_generate: int = N_GENERATE,
                        n_keep: int = N_KEEP, loss_threshold: float | str = LOSS_THRESHOLD, seed: int = SEED,
                        candidates: pd.DataFrame | None = None, batch_size: int = 32, device="cpu",
                        max_length: int = MAX_LENGTH, resume: bool = True) -> Path:
    """Generate, score and filter; write `11A_object_prompts.parquet` and `11A_object_stats.json` to `out_dir`.

    pairs: default the release matrix. candidates: pre-generated candidates (e.g. `release_candidates`
    for a subset); default `generate_candidates(pairs, n_generate, seed)`. With candidates and no
    pairs, the pairs are those in the candidates. Scores are checkpointed next to the outputs, so an
    interrupted run resumes (`resume=False` rescores). Returns the parquet path.
    """
    out_dir = Path(out_dir)
    if pairs is not None:
        pairs = _check_pairs(pairs)
    if candidates is None:
        pairs = pairs or build_concept_matrix()
        candidates = generate_candidates(pairs, n_generate=n_generate, seed=seed)
    else:
        in_candidates = list(dict.fromkeys(zip(candidates.ast_node, candidates.builtin_obj)))
        pairs = pairs or _check_pairs(in_candidates)
        stray = set(in_candidates) - set(pairs)
        if stray:
            raise ValueError(f"candidates hold pair(s) not in `pairs`: {sorted(stray)[:3]}")
    parse_loss_threshold(loss_threshold)     # a bad argument fails before the (long) scoring

    checkpoint = out_dir / f".{layout.OBJECT_PROMPTS}.scores.npz"
    out_dir.mkdir(parents=True, exist_ok=True)
    losses, lengths = _score_resumable(model, tokenizer, list(candidates.prompt_text), checkpoint,
                                       batch_size=batch_size, device=device, max_length=max_length, resume=resume)
    mode = "small" if pairs == build_concept_matrix() else "subset"
    prompts, stats = filter_pairs(candidates, losses, lengths, loss_threshold=loss_threshold, n_keep=n_keep,
                                  pairs=pairs, n_generate=n_generate, mode=mode)

    path = out_dir / layout.OBJECT_PROMPTS
    layout.write_table(prompts, path)
    with layout.atomic_output(out_dir / layout.OBJECT_PROMPT_STATS) as tmp:
        tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    checkpoint.unlink(missing_ok=True)
    return path
