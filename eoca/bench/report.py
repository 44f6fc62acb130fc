"""Write a benchmark report: a markdown page with tables, PNG figures, and where and when it ran."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["machine_info", "allocation_figures", "allocation_tables", "write_report"]

_PACKAGES = ("eoca", "numpy", "pandas", "xarray", "numba", "pyomo", "highspy", "ortools", "torch", "torch-geometric")


def machine_info() -> dict[str, str]:
    """The machine, versions and date a report ran on."""
    info = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory"] = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        pass
    for pkg in _PACKAGES:
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def _fmt_size(n: float) -> str:
    n = int(n)
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10 or 1) == 0:
            v = n / div
            return f"{v:g}{unit}"
    return str(n)


def allocation_tables(rows: pd.DataFrame) -> str:
    """Markdown tables, one per spec: size x solver with seconds, objective fraction, gap and violations."""
    out = []
    for spec, df in rows.groupby("spec", sort=False):
        axis = df["axis"].iloc[0]
        out.append(f"### {spec}\n")
        table = []
        for _, r in df.iterrows():
            if r.get("skipped"):
                table.append({axis: _fmt_size(r["size"]), "solver": r["solver"], "status": "skipped",
                              "seconds": "", "objective / optimum": "", "gap to bound": "",
                              "risk violations": "", "demand misses": "", "note": r["skipped"]})
                continue
            table.append({
                axis: _fmt_size(r["size"]),
                "solver": r["solver"],
                "status": r["status"],
                "seconds": f"{r['seconds']:.3f}",
                "objective / optimum": f"{r['fraction']:.4%}" if np.isfinite(r["fraction"]) else "",
                "gap to bound": f"{r['gap']:.3%}" if np.isfinite(r["gap"]) else "",
                "risk violations": f"{int(r['risk_violations']):,}",
                "demand misses": f"{int(r['demand_misses']):,}",
                "note": "",
            })
        frame = pd.DataFrame(table)
        if not frame["note"].astype(bool).any():
            frame = frame.drop(columns="note")
        out.append(frame.to_markdown(index=False))
        out.append("")
    return "\n".join(out)


def allocation_figures(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Runtime and objective against scale (log axes), one panel per instance family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ran = rows[rows["skipped"] == ""].copy()
    paths = []
    for what, column, log_y, label in (
        ("runtime", "seconds", True, "solve seconds"),
        ("objective", "fraction", False, "objective / proven optimum"),
    ):
        specs = list(dict.fromkeys(ran["spec"]))
        if not specs:
            continue
        cols = min(3, len(specs))
        rows_n = int(np.ceil(len(specs) / cols))
        fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
        for ax, spec in zip(axes.flat, specs):
            df = ran[ran["spec"] == spec]
            for solver, s in df.groupby("solver", sort=False):
                ax.plot(s["size"], s[column], marker="o", label=solver)
            ax.set_xscale("log")
            sizes = sorted(df["size"].unique())
            ax.set_xticks(sizes, [_fmt_size(v) for v in sizes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            if log_y:
                ax.set_yscale("log")
            ax.set_title(spec)
            ax.set_xlabel(df["axis"].iloc[0])
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[len(specs):]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"allocation_{what}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(out_dir: str | os.PathLike, sections: list[tuple[str | None, str]], *,
                 title: str = "eoca benchmarks", intro: str = "") -> Path:
    """Write ``README.md`` in ``out_dir`` from (heading, markdown) sections plus the machine block; a
    section without a heading (``None``) brings its own."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["## Where and when", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines.append("")
    for heading, body in sections:
        lines += ([f"## {heading}", ""] if heading is not None else []) + [body, ""]
    path = out_dir / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path
