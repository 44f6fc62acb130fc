"""Run the Python code of every documentation page, so no page can go stale.

Each page's ```python blocks run in page order in one namespace (a page reads as one session), in a
temporary working directory. Blocks that cannot run here (a cluster, hours of training) are written as
```text or ```bash on the pages. Where the printed output is what the page teaches, the test checks it.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest

import eoca

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _guide_expectations():
    solver_lines = [rf"{name}\s+(optimal|feasible)\s+objective 2\.40 gap 0\.00% ok=True"
                    for name in eoca.available_solvers()]
    return [
        r"<eoca\.AllocationProblem: 3 users x 2 funds, demands exact>",
        r"f1\s+demand\s+2\s+risk 'R1'\n\s+f2\s+demand\s+1\s+risk 'R3'",
        r"demand: funds demand at least 4 users in total but the grid has only 3 users",
        r"status='optimal'>\n\s+objective\s+2\.4000\n\s+bound\s+2\.4000\s+gap 0\.0000%",
        r"u1\s+f1\nu2\s+f1\nu3\s+f2",
        *solver_lines,
        r"'tight-20000x8': 20,000 users x 8 funds",
        # the risk-safe heuristic undoes exactly the breaches the faithful one made
        r"faithful Algorithm 1: error - (?P<breaches>[\d,]+) users above their risk tolerance\n"
        r"risk-safe heuristic:  feasible gap \d+\.\d{3}%, (?P=breaches) breaches undone by moving [\d,]+ users",
        r"u1\s+f1\nu2\s+(NaN|None)\nu3\s+f2",
        r"infeasible: risk level 'R3' and above: funds need at least 2 users but only 1 users tolerate that "
        r"risk \(short by 1\)",
        # side rules: a certified gap, the binding budget priced, the checker naming every broken rule
        r"(optimal|feasible) gap \d\.\de[-+]\d\d True",
        r"commission budget\s+4[45]\d\.\d+\s+NaN\s+450\.0\s+\d+\.\d+\s+True",
        r"\d+ users shown a fund the eligibility mask forbids; constraint 'new users in money_market' broken",
        r"no allocation, even a fractional one, meets the side constraint 'onboarding'",
        r"\noptimal\n",
    ]


#: What the printed output of a page must show, in this order (regular expressions).
EXPECTED = {
    "guide.md": _guide_expectations,
    "testing.md": lambda: [
        r"exact: optimal, 100\.0% of the optimum",
        r"heuristic: feasible, (99\.\d|100\.0)% of the optimum",
        r"error - [1-9]\d* users above their tolerance",
        r"optimum \d+\.\d{4} three ways, spread (0e\+00|\de-1[2-6])",
    ],
    "predict.md": lambda: [
        r"unit \d+, sigma bound \d\.\d\d, cap [\d,]+",
        r"ratio",  # the calibration table's header, then the truth's own allocation value
        r"(?m)^1\.000$",
    ],
    "files.md": lambda: [
        r"etv\.user.*ids must be all integers or all strings",
        r"user-000",
        r"\{'bond': 3, 'equity': 3\}",
        r"(?m)^(Status\.OPTIMAL|optimal)$",
    ],
    "distributed.md": lambda: [
        r"lazy: True, chunks of 25,000 users",
        r"exact optimal, gap \d\.\de-1\d|exact optimal, gap 0\.0e\+00",
        r"assignment stored: 100,000 users",
        r"optimal [\d,]+ users gathered in \d+ round",
    ],
}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


WITH_CODE = [page for page in PAGES if python_blocks(page)]


def test_the_pages_that_teach_with_code_are_run():
    names = {page.name for page in WITH_CODE}
    assert {"README.md", "guide.md", "distributed.md", "testing.md"} <= names
    assert set(EXPECTED) <= names


@pytest.mark.parametrize("page", WITH_CODE, ids=[page.name for page in WITH_CODE])
def test_page_runs_and_prints_what_it_says(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    printed = io.StringIO()
    for number, block in enumerate(blocks, 1):
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(block, f"{page.name}[block {number}]", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{page.name} block {number} failed: {exc!r}\n{block}") from exc
    out = printed.getvalue()
    position = 0
    for pattern in EXPECTED.get(page.name, list)():
        found = re.compile(pattern).search(out, position)
        assert found, f"{page.name}: no {pattern!r} in the output after position {position}:\n{out[position:]}"
        position = found.end()
