"""The training loop: Adam, mini-batches, early stopping on validation loss, NaN guards, checkpoints."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from eoca.predict.errors import TrainingDivergedError
from eoca.predict.features import EncodedPlatform
from eoca.predict.losses import bce_loss, esj_censored_loss, esj_loss, mse_loss, ziln_loss
from eoca.predict.mixture import components

__all__ = ["TrainingHistory", "objective", "train_network", "save_checkpoint", "load_checkpoint"]

LossFn = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]


@dataclass
class TrainingHistory:
    """What happened during training.

    Attributes
    ----------
    train_loss, val_loss : list of float
        Mean loss per epoch.
    best_epoch : int
        Epoch (0-based) whose weights were kept.
    stopped_early : bool
        Whether patience ran out before ``max_epochs``.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def objective(loss: str, zero_threshold: float = 0.01) -> LossFn:
    """The training objective for a loss name.

    The main loss (``esj``, ``esj-censored`` with ``zero_threshold``, ``ziln``, ``mse`` or ``bce``) is applied to pCTCVR and the amount
    outputs; models with an ESMM structure (a ``pctr`` output) add cross-entropy of pCTR against
    clicks, as ESMM does.
    """

    def fn(out: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
        amount = labels["amount"]
        if loss in ("esj", "esj-censored", "ziln"):
            if "weight_0" in out:  # a mixture of lognormals: components on a last axis
                weights, mu, sigma = components(out, lambda parts: torch.stack(parts, dim=-1))
            else:
                weights, mu, sigma = None, out["mu"], out["sigma"]
        if loss == "esj":
            value = esj_loss(out["p"], mu, sigma, amount, weights)
        elif loss == "esj-censored":
            value = esj_censored_loss(out["p"], mu, sigma, amount, zero_threshold, weights)
        elif loss == "ziln":
            value = ziln_loss(out["p"], mu, sigma, amount, weights)
        elif loss == "mse":
            value = mse_loss(out.get("p"), out["mu"], amount)
        else:
            value = bce_loss(out["p"], labels["conversion"])
        if "pctr" in out:
            value = value + bce_loss(out["pctr"], labels["click"])
        return value

    return fn


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write a checkpoint of tensors and plain Python values (loadable with ``weights_only=True``)."""
    torch.save(payload, Path(path))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely: only tensors and plain containers are unpickled."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def _mean_loss(
    network: nn.Module, loss_fn: LossFn, data: EncodedPlatform, rows: Tensor, batch_size: int, graph: bool
) -> float:
    """Mean loss over ``rows`` as the model predicts: graph models attend over every payment."""
    from eoca.predict.inference import merchant_embeddings

    total, count = 0.0, 0
    with torch.inference_mode():
        merchant_h = merchant_embeddings(network, data) if graph else None
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            batch, labels = data.impression_batch(idx, graph=graph, merchant_h=merchant_h)
            total += float(loss_fn(network(batch), labels)) * len(idx)
            count += len(idx)
    return total / max(count, 1)


def train_network(
    network: nn.Module,
    loss_fn: LossFn,
    train: EncodedPlatform,
    validation: EncodedPlatform,
    *,
    train_rows: Tensor | None = None,
    val_rows: Tensor | None = None,
    graph: bool = False,
    graph_fanout: tuple[int, int] | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 512,
    max_epochs: int = 50,
    patience: int = 5,
    grad_clip: float = 10.0,
    seed: int = 0,
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
) -> TrainingHistory:
    """Fit ``network`` with Adam on impressions of ``train``, stopping early on ``validation`` loss.

    The weights of the epoch with the lowest validation loss are restored at the end (and written to
    ``checkpoint_path`` whenever they improve). Shuffling uses a generator seeded with ``seed``.

    Graph models (``graph=True``) train on the full graph in every batch when ``graph_fanout`` is None,
    else on a neighbourhood sampled per batch (at most ``graph_fanout[0]`` payments per user and
    ``graph_fanout[1]`` payers per merchant; see :mod:`eoca.predict.sampling`), drawn from a second
    generator seeded with ``seed``. The validation loss always uses every payment, as prediction does.
    With ``progress`` a bar per epoch counts the training impressions (and their rate).

    Raises
    ------
    TrainingDivergedError
        When a batch loss or a gradient is NaN or infinite.
    """
    from tqdm.auto import tqdm

    train_rows = torch.arange(len(train.amount)) if train_rows is None else train_rows
    val_rows = torch.arange(len(validation.amount)) if val_rows is None else val_rows
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.Generator().manual_seed(seed + 1)
    # foreach: one fused update over all parameter tensors (ESDPM has 44 small ones): 1.7x faster steps
    optimiser = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    history = TrainingHistory()
    best, best_state, waited = math.inf, copy.deepcopy(network.state_dict()), 0
    for epoch in range(max_epochs):
        network.train()
        order = train_rows[torch.randperm(len(train_rows), generator=generator)]
        total = 0.0
        bar = tqdm(
            total=len(order), desc=f"epoch {epoch}", unit=" impressions", unit_scale=True,
            disable=not progress, leave=False,
        )
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch, labels = train.impression_batch(idx, graph=graph, fanout=graph_fanout, generator=sampler)
            loss = loss_fn(network(batch), labels)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"The training loss became {float(loss.detach())} at epoch {epoch}, batch {start // batch_size}. "
                    f"Try a smaller learning rate (lr={lr}) or check the amounts for extreme values."
                )
            optimiser.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
            if not torch.isfinite(norm):
                raise TrainingDivergedError(
                    f"A gradient became {float(norm)} at epoch {epoch}, batch {start // batch_size}. "
                    f"Try a smaller learning rate (lr={lr})."
                )
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            bar.update(len(idx))
        bar.close()
        network.eval()
        history.train_loss.append(total / max(len(order), 1))
        val = _mean_loss(network, loss_fn, validation, val_rows, 4 * batch_size, graph)
        history.val_loss.append(val)
        if not math.isfinite(val):
            raise TrainingDivergedError(f"The validation loss became {val} at epoch {epoch}.")
        if val < best - 1e-6:
            best, best_state, waited, history.best_epoch = val, copy.deepcopy(network.state_dict()), 0, epoch
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, {"state_dict": best_state, "epoch": epoch, "val_loss": val})
        else:
            waited += 1
            if waited >= patience:
                history.stopped_early = True
                break
    network.load_state_dict(best_state)
    network.eval()
    return history
