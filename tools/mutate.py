"""Mutation check: does the test suite notice when the checker or the problem's validation is wrong?

Each mutant flips one operator in ``eoca/checks.py`` or ``eoca/problem.py`` (a comparison, ``and``/``or``,
``+``/``-``, or drops a ``not``), in a copy of the repository under a temporary directory, and runs the
tests that cover that file (stopping at the first failure). A mutant the tests fail on is *killed*; one
they pass is *survived* and is listed with its line. The working tree is never modified.

Run from the repository root::

    python tools/mutate.py                  # every mutant of both files
    python tools/mutate.py --file checks    # one file
    python tools/mutate.py --list           # only list the mutants

The numba kernels of the copy are cached in one directory for the whole run (``--cache``), so only the
mutated file's kernels compile again for each mutant.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The tests that cover each file, fastest killers first.
TESTS = {
    "eoca/checks.py": [
        "tests/test_validation_messages.py::test_the_checker_and_the_bound_reject_malformed_input_by_name",
        "tests/test_validation_messages.py::test_the_checker_never_wraps_a_wide_code_onto_a_fund_and_rejects_non_integer_codes",
        "tests/test_testing.py::test_the_bound_is_the_dual_value_on_a_grid_of_many_users",
        "tests/test_testing.py::test_references_on_a_worked_example",
        "tests/test_testing.py::test_the_checker_agrees_with_the_recount_on_any_allocation",
        "tests/test_testing.py::test_the_bound_is_the_dual_value_of_any_prices",
        "tests/test_solvers_conformance.py::test_canonical",
        "tests/test_testing.py::test_helper_catches_a_checker_that_ignores_risk_violations",
    ],
    "eoca/problem.py": [
        "tests/test_validation_messages.py",
        "tests/test_problem.py",
        "tests/test_distributed.py::test_validation_runs_as_a_reduction_and_names_the_entry",
        "tests/test_testing.py::test_the_risk_coding_and_the_diagnosis_agree_with_the_declaration",
        "tests/test_testing.py::test_brute_force_milp_lp_and_hall_condition_agree",
        "tests/test_solvers_conformance.py::test_canonical",
    ],
}

_SWAP = {
    ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
    ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in",
    ast.Add: "-", ast.Sub: "+", ast.And: "or", ast.Or: "and",
}
_TOKEN = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
    ast.Add: "+", ast.Sub: "-", ast.And: "and", ast.Or: "or",
}


@dataclass(frozen=True)
class Mutant:
    path: str
    line: int
    start: int  # offsets into the file's text
    end: int
    new: str
    label: str

    def apply(self, text: str) -> str:
        return text[: self.start] + self.new + text[self.end :]


def _offsets(text: str) -> list[int]:
    starts, total = [], 0
    for line in text.splitlines(keepends=True):
        starts.append(total)
        total += len(line)
    return starts


def _find_token(text: str, lo: int, hi: int, token: str) -> int | None:
    """Offset of ``token`` as a whole word/operator between ``lo`` and ``hi``, skipping brackets/spaces."""
    span = text[lo:hi]
    at = span.find(token)
    while at >= 0:
        before = span[at - 1] if at > 0 else " "
        after = span[at + len(token)] if at + len(token) < len(span) else " "
        word = token[0].isalpha()
        if not word and (after in "=<>" or before in "=<>!"):
            at = span.find(token, at + 1)
            continue
        if word and (before.isalnum() or after.isalnum() or before == "_" or after == "_"):
            at = span.find(token, at + 1)
            continue
        return lo + at
    return None


def mutants(path: str) -> list[Mutant]:
    text = (ROOT / path).read_text()
    tree = ast.parse(text)
    starts = _offsets(text)

    def pos(line: int, col: int) -> int:
        return starts[line - 1] + col

    def span_between(a: ast.AST, b: ast.AST) -> tuple[int, int]:
        return pos(a.end_lineno, a.end_col_offset), pos(b.lineno, b.col_offset)

    found: list[Mutant] = []
    for node in ast.walk(tree):
        pairs: list[tuple[ast.AST, ast.AST, type]] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            pairs = [(operands[i], operands[i + 1], type(op)) for i, op in enumerate(node.ops)]
        elif isinstance(node, ast.BinOp) and type(node.op) in _SWAP:
            pairs = [(node.left, node.right, type(node.op))]
        elif isinstance(node, ast.BoolOp):
            pairs = [(node.values[i], node.values[i + 1], type(node.op)) for i in range(len(node.values) - 1)]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            start = pos(node.lineno, node.col_offset)
            end = start + 3  # "not" and the spaces after it (a bracket after them stays)
            while text[end] == " ":
                end += 1
            shown = text[start:end + 20].split(chr(10))[0]
            found.append(Mutant(path, node.lineno, start, end, "", f"drop 'not' ({shown!r})"))
            continue
        for left, right, op in pairs:
            if op not in _SWAP:
                continue
            lo, hi = span_between(left, right)
            token = _TOKEN[op]
            at = _find_token(text, lo, hi, token)
            if at is None:
                continue
            line = text.count("\n", 0, at) + 1
            found.append(Mutant(path, line, at, at + len(token), _SWAP[op], f"{token!r} -> {_SWAP[op]!r}"))
    return sorted(found, key=lambda m: m.start)


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("seed/", "docs/benchmarks/")) or not (ROOT / name).is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)  # keeps mtimes: numba's cache of unchanged files stays valid


def run(files: list[str], timeout: float, cache: Path, work: Path,
        only: list[int] | None = None, first: int = 1, last: int = 10**9) -> list[tuple[Mutant, str, float]]:
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    _copy_repo(repo)
    env = {**os.environ, "PYTHONPATH": str(repo), "NUMBA_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    outcomes = []
    for path in files:
        original = (ROOT / path).read_text()
        todo = [m for m in mutants(path) if not only or m.line in only]
        print(f"{path}: {len(todo)} mutants; tests {' '.join(TESTS[path])}", flush=True)
        for number, mutant in enumerate(todo, 1):
            if not first <= number <= last:
                continue
            (repo / path).write_text(mutant.apply(original))
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                     "--hypothesis-seed=0", *TESTS[path]],
                    cwd=repo, env=env, capture_output=True, text=True, timeout=timeout,
                )
                if proc.returncode == 0:
                    verdict = "survived"
                else:  # name the first test that failed (or the error that stopped the run)
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
                    verdict = "killed by " + (lines[0].split(" - ")[0].split(" ", 1)[1] if lines
                                              else f"pytest exit code {proc.returncode}")
                    if not lines:  # not a test failure: show why, it may be the run, not the mutant
                        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                        verdict += " (" + " | ".join(tail) + ")"
            except subprocess.TimeoutExpired:
                verdict = "timeout"  # undecided: the tests did not finish
            seconds = time.perf_counter() - start
            outcomes.append((mutant, verdict, seconds))
            print(f"  [{number}/{len(todo)}] {path}:{mutant.line} {mutant.label}: {verdict} ({seconds:.0f} s)",
                  flush=True)
            shutil.copy2(ROOT / path, repo / path)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", choices=["checks", "problem"], action="append",
                        help="mutate only this file (repeatable); default both")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant's test run")
    parser.add_argument("--only", type=int, action="append", help="run only the mutants at this line (repeatable)")
    parser.add_argument("--start", type=int, default=1, help="resume: skip the mutants numbered below this")
    parser.add_argument("--stop", type=int, default=10**9, help="skip the mutants numbered above this")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "eoca-mutate-numba")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "eoca-mutate")
    args = parser.parse_args(argv)
    files = [f"eoca/{name}.py" for name in (args.file or ["checks", "problem"])]
    if args.list:
        for path in files:
            for m in mutants(path):
                print(f"{path}:{m.line} {m.label}")
        return 0
    outcomes = run(files, args.timeout, args.cache, args.work, args.only, args.start, args.stop)
    left = [(m, v) for m, v, _ in outcomes if not v.startswith("killed")]
    killed = len(outcomes) - len(left)
    print(f"\n{len(outcomes)} mutants: {killed} killed, {len(left)} survived or undecided")
    for m, v in left:
        print(f"  {v}: {m.path}:{m.line} {m.label}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
