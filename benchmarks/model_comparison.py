"""Compare the nine ETV models and the three losses; print the tables of the closing note.

Usage::

    python benchmarks/model_comparison.py [--seeds 0 1 2] [--users 3000] [--epochs 40] [--out DIR]

Synthetic platform (known truth): every model on each seed, scored on the time-split test
impressions (AUC, logloss of pCTCVR; MSE, MAE of ETV against realised amounts) and against the true
ETV over the whole user × fund grid (true MSE/MAE, expected amount of top-ETV assignment). The loss
comparison (the paper's Fig. 5) reads ESDPM-NCG (ESJ), MTL-ZILN and MTL-MSE, which share the
network. ESDPM against ESDPM-NCG shows what the consumption graph adds when capital is only in the
graph. CDNOW (real spend from the ``lifetimes`` wheel): the ESDPM-NCG network trained with ESJ,
ZILN and MSE on random customer splits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from eoca.data import load_cdnow, synthetic_platform
from eoca.predict import ETVPredictor, available_models, evaluate

SYNTH_COLUMNS = [
    "auc",
    "logloss",
    "mse",
    "mae",
    "true_mse",
    "true_mae",
    "gini",
    "thc",
    "tha",
    "true_thc",
    "true_tha",
    "tha_ratio",
]
LOSS_MODELS = {"esdpm-ncg": "ESJ", "mtl-ziln": "ZILN", "mtl-mse": "MSE"}


def run_synthetic(seeds: list[int], n_users: int, epochs: int) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        platform = synthetic_platform(n_users, 8, seed=seed)
        train, valid, test = platform.data.split()
        for name in available_models():
            t0 = time.perf_counter()
            model = ETVPredictor(name, max_epochs=epochs, seed=seed, progress=False).fit(
                train, validation=valid
            )
            report = evaluate(model, test, truth=platform)
            rows.append(
                {
                    "seed": seed,
                    "model": name,
                    "fit_s": time.perf_counter() - t0,
                    "best_epoch": model.history_.best_epoch,
                    **report.metrics,
                }
            )
            print(f"synthetic seed={seed} {name:14s} {rows[-1]['fit_s']:.1f}s", flush=True)
    return pd.DataFrame(rows)


def run_cdnow(seeds: list[int], epochs: int) -> pd.DataFrame:
    data = load_cdnow()
    rows = []
    for seed in seeds:
        train, valid, test = data.split(seed=seed)
        for label, kwargs in (
            ("ESJ", {"model": "esdpm-ncg"}),
            ("ZILN", {"model": "mtl-ziln"}),
            ("MSE", {"model": "mtl-mse"}),
        ):
            model = ETVPredictor(**kwargs, max_epochs=epochs, seed=seed, progress=False).fit(
                train, validation=valid
            )
            report = evaluate(model, test)
            comps = model.predict_components(test)
            rows.append(
                {
                    "seed": seed,
                    "loss": label,
                    "mean_etv": float(comps["etv"].mean()),
                    "mean_amount": float(test.impressions["amount"].mean()),
                    **report.metrics,
                }
            )
            print(f"cdnow seed={seed} {label}", flush=True)
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame, by: str, columns: list[str]) -> pd.DataFrame:
    mean = frame.groupby(by, sort=False)[columns].mean()
    std = frame.groupby(by, sort=False)[columns].std()
    return mean.round(4).astype(str) + " ± " + std.round(4).astype(str)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-cdnow", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    synth = run_synthetic(args.seeds, args.users, args.epochs)
    order = ["dnn-c", "dnn-v", "shared-bottom", "mmoe", "esmm", "mtl-ziln", "mtl-mse", "esdpm-ncg", "esdpm"]
    table = summarise(synth, "model", SYNTH_COLUMNS).reindex(order)
    print(f"\n## Synthetic platform: {args.users} users, 8 funds, seeds {args.seeds} (mean ± std)\n")
    print(table[["auc", "logloss", "mse", "mae", "true_mse", "true_mae", "gini"]].to_markdown())
    print("\n## Loss comparison (Fig. 5): same network, three losses\n")
    losses = synth[synth["model"].isin(LOSS_MODELS)].assign(loss=lambda d: d["model"].map(LOSS_MODELS))
    print(summarise(losses, "loss", ["thc", "tha", "true_thc", "true_tha", "tha_ratio"]).to_markdown())
    print("\n## Consumption graph: ESDPM vs ESDPM-NCG (capital visible only through payments)\n")
    graph = synth[synth["model"].isin(["esdpm", "esdpm-ncg"])]
    print(
        summarise(
            graph, "model", ["auc", "mae", "true_mae", "true_mse", "gini", "true_tha", "tha_ratio"]
        ).to_markdown()
    )
    frames = {"synthetic": synth}
    if not args.skip_cdnow:
        cd = run_cdnow(args.seeds, args.epochs)
        print("\n## CDNOW (one fund; holdout spend as amount): ESJ vs ZILN vs MSE\n")
        print(
            summarise(
                cd,
                "loss",
                ["auc", "logloss", "mse", "mae", "gini", "calibration_error", "mean_etv", "mean_amount"],
            ).to_markdown()
        )
        frames["cdnow"] = cd
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, frame in frames.items():
            frame.to_csv(args.out / f"model_comparison_{name}.csv", index=False)


if __name__ == "__main__":
    main()
