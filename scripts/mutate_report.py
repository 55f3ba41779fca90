# -*- test-case-name: tests.test_headers -*-
"""
Summarise a mutmut run (scripts/mutate): one table row per module, and the
diff of every surviving mutant in mutants/survivors.txt, to be explained in
docs/testing.md or killed by a new test.

Only the mutants named on the command line (mutmut globs) are counted, so
that a module mutated as a whole for a few of its functions (the admin API)
reports just those.
"""

import ast
import fnmatch
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path

import libcst as cst
from mutmut.mutation.diff_apply import (
    get_diff_for_mutant,
    read_functions_from_index,
    read_mutant_function,
    read_mutants_module,
    read_original_function,
)
from mutmut.stats import status_by_exit_code

# The fixed order of docs/testing.md's table.
MODULES = [
    "s2sgate/s2s/inbound.py",
    "s2sgate/features/dialback.py",
    "s2sgate/features/sasl_external.py",
    "s2sgate/features/starttls.py",
    "s2sgate/s2s/negotiation.py",
    "s2sgate/auth/certs.py",
    "s2sgate/auth/dialback.py",
    "s2sgate/xmpp/stanzas.py",
    "s2sgate/xmpp/parser.py",
    "s2sgate/gateway/policy.py",
    "s2sgate/auth/requirements.py",
    "s2sgate/ops/admin/api.py",
]
COLUMNS = ["killed", "timeout", "survived (log)", "survived (text)", "survived",
           "no tests", "not checked"]

# Calls whose arguments after the first are human-readable text (a stream
# error's <text/>, a failure's text, an HTTP error's message, the reason of
# a certificate verdict: auth/certs.py's verdict(status, reason)), and
# exceptions whose message is only text.
_TEXT_CALLS = {"streamError": 1, "StreamError": 1, "fail": 1, "_HTTPError": 1,
               "errorReply": 2, "ValueError": 0, "TypeError": 0, "Failed": 1,
               "_failure": 2, "record": 1, "dbError": 4, "verdict": 1}
_LOG_LEVELS = {"debug", "info", "warn", "error", "critical", "failure"}


def _callName(call):
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)


def _isLogCall(node):
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    f = node.value.func
    if not (isinstance(f, ast.Attribute) and f.attr in _LOG_LEVELS):
        return False
    owner = f.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    # peerLog: the rate-limited log (s2s/guard.LogLimiter); its event name is
    # also the key of the window that limits it.
    return name in ("log", "log_", "_log", "peerLog")


class _DropLogs(ast.NodeTransformer):
    def generic_visit(self, node):
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                kept = [s for s in stmts if not _isLogCall(s)]
                setattr(node, field, kept or [ast.Pass()])
        return node


class _DropTexts(ast.NodeTransformer):
    def visit_Call(self, node):
        self.generic_visit(node)
        keep = _TEXT_CALLS.get(_callName(node))
        if keep is not None:
            node.args = node.args[:keep]
            node.keywords = [k for k in node.keywords
                             if k.arg not in ("text", "message", "why", "reason")]
        return node


def _code(function):
    return textwrap.dedent(cst.Module([function]).code)


def classify(name, module):
    """
    Why a survivor cannot change behaviour, when a rule says so: "log" (it
    changes only a log call: text, fields, level) or "text" (only the human
    text of an error); otherwise None, to be explained by hand.
    """
    functions = read_functions_from_index(name, module)
    if functions is None:
        tree = read_mutants_module(module)
        functions = (read_original_function(tree, name), read_mutant_function(tree, name))
    try:
        orig, mutant = (ast.parse(_code(f)) for f in functions)
    except SyntaxError:
        return None
    dump = lambda t, *passes: ast.dump(_apply(t, passes))  # noqa: E731
    if dump(orig, _DropLogs) == dump(mutant, _DropLogs):
        return "log"
    if dump(orig, _DropLogs, _DropTexts) == dump(mutant, _DropLogs, _DropTexts):
        return "text"
    return None


def _apply(tree, passes):
    tree = ast.parse(ast.unparse(tree))
    for p in passes:
        tree = p().visit(tree)
    # The function's own name differs between original and mutant.
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.name = "f"
            break
    return tree


def main(patterns):
    rows, survivors = [], []
    for module in MODULES:
        meta = Path("mutants") / (module + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter()
        for name, code in sorted(codes.items(), key=lambda kv: _order(kv[0])):
            if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            status = status_by_exit_code[code]
            if status in ("survived", "no tests", "suspicious"):
                why = classify(name, module) if status == "survived" else None
                if why:
                    status = f"survived ({why})"
                survivors.append((status, name, get_diff_for_mutant(name, path=module)))
            counts[status] += 1
        rows.append((module, counts))
    print("| module | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    total = Counter()
    for module, counts in rows:
        total.update(counts)
        print(f"| {module} | " + " | ".join(str(counts[c]) for c in COLUMNS) + " |")
    print("| **all** | " + " | ".join(str(total[c]) for c in COLUMNS) + " |")
    other = set(total) - set(COLUMNS)
    if other:
        print("other statuses:", {k: total[k] for k in other})
    with open("mutants/survivors.txt", "w") as out:
        for status, name, diff in survivors:
            out.write(f"# {name}: {status}\n{diff}\n\n")
    print(f"{len(survivors)} survivors (and mutants no test reaches) in mutants/survivors.txt")


def _order(name):
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


if __name__ == "__main__":
    main(sys.argv[1:])
