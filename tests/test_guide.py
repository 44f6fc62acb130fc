"""Run the code of docs/guide.md so the guide cannot go stale."""

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


def test_guide_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{GUIDE.name}[block {number}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message says which block broke
            raise AssertionError(f"guide block {number} failed: {exc!r}\n{block}") from exc
    out = capsys.readouterr().out
    assert "demand" in out and "optimal" in out
