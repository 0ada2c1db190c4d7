"""Handwritten digits on real data: scikit-learn's bundled UCI digits (1,797 8×8 images, no
download), a small CNN with BatchNorm and Dropout, the compiled training step, and evaluation
in test mode.

Run it:   pip install -e ".[examples]" && python examples/digits.py   (writes ./digits.png)
bf16:     python examples/digits.py --mixed-precision bf16
Compile:  luxc compile examples/digits.py:factory --out digits.luxc
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import luxc
from luxc import nn
from luxc.training import compute_objective, single_train_step_


class Split(NamedTuple):
    x_train: np.ndarray  # (N, 8, 8, 1) float32 in [0, 1]
    y_train: np.ndarray  # (N, 10) one-hot
    x_test: np.ndarray
    y_test: np.ndarray


class Epoch(NamedTuple):
    loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float


def load(seed: int = 0) -> Split:
    """The digits as (N, 8, 8, 1) images in [0, 1] with one-hot labels; 25% held out, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = np.eye(10, dtype=np.float32)[digits.target]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=digits.target, random_state=seed)
    return Split(x_train, y_train, x_test, y_test)


def make_model() -> nn.Chain:
    return nn.Chain(
        nn.Conv((3, 3), 1, 16, pad="same"), nn.BatchNorm(16, jax.nn.relu), nn.MaxPool((2, 2)),
        nn.Conv((3, 3), 16, 32, pad="same"), nn.BatchNorm(32, jax.nn.relu), nn.MaxPool((2, 2)),
        nn.FlattenLayer(), nn.Dropout(0.2), nn.Dense(2 * 2 * 32, 10),
    )


def objective(model: nn.AbstractLayer, ps: dict, st: dict, data: tuple) -> tuple:
    """Cross-entropy on logits; the accuracy travels in ``stats``."""
    x, y = data
    logits, st = model(x, ps, st)
    loss = luxc.CrossEntropyLoss(logits=True)(logits, y)
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == jnp.argmax(y, axis=-1))
    return loss, st, {"accuracy": accuracy}


def factory(batch: int = 64, seed: int = 0):
    """``(objective, data, train_state)`` for ``luxc compile``: one training batch as data."""
    split = load(seed)
    model = make_model()
    ps, st = luxc.setup(jax.random.key(seed), model)
    ts = luxc.TrainState(model, ps, st, optax.adam(3e-3))
    return objective, (split.x_train[:batch], split.y_train[:batch]), ts


def evaluate(ts: luxc.TrainState, x: np.ndarray, y: np.ndarray,
             options: luxc.CompileOptions | None = None) -> tuple[float, float]:
    """Loss and accuracy in test mode: BatchNorm uses its running statistics, Dropout is off.

    ``compute_objective`` runs the objective without gradients, compiled once and sharing the
    training step's cache and parameters; ``testmode`` flips the ``training`` flags in the state.
    """
    loss, _, stats = compute_objective(luxc.AutoXLA(), objective, (x, y),
                                       ts.replace(states=luxc.testmode(ts.states)),
                                       compile_options=options)
    return float(loss), float(stats["accuracy"])


def train(epochs: int = 15, batch: int = 64, seed: int = 0, show_progress: bool = True,
          mixed_precision: str | None = None) -> tuple[list[Epoch], luxc.TrainState]:
    """Train for ``epochs`` passes over the shuffled training set (full batches only, so one
    executable serves every step); evaluate on the held-out quarter after each epoch.
    ``mixed_precision``: ``None``, ``"bf16"`` or ``"f16"`` (``luxc.CompileOptions``), for
    training and evaluation alike."""
    options = luxc.CompileOptions(mixed_precision=mixed_precision)
    split = load(seed)
    _, _, ts = factory(batch, seed)
    rng = np.random.default_rng(seed)
    n = len(split.x_train) // batch * batch
    history: list[Epoch] = []
    columns = (TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("train", total=epochs, status="")
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(split.x_train))[:n].reshape(-1, batch)
            losses, accuracies = [], []
            for idx in order:
                _, loss, stats, ts = single_train_step_(
                    luxc.AutoXLA(), objective, (split.x_train[idx], split.y_train[idx]), ts,
                    return_gradients=False, compile_options=options)
                losses.append(loss)
                accuracies.append(stats["accuracy"])
            test_loss, test_accuracy = evaluate(ts, split.x_test, split.y_test, options)
            history.append(Epoch(float(np.mean(losses)), float(np.mean(accuracies)),
                                 test_loss, test_accuracy))
            status = (f"loss {history[-1].loss:.4f}  train {history[-1].train_accuracy:6.2%}  "
                      f"test {test_accuracy:6.2%}")
            progress.update(task, advance=1, status=status)
            progress.console.print(f"epoch {epoch:2d}  {status}", highlight=False)
    return history, ts


def plot(history: list[Epoch], path: str) -> None:
    """Loss (left) and accuracy (right) per epoch, train and test, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    epochs = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h.loss for h in history], "o-", label="train (epoch mean)")
    ax_loss.plot(epochs, [h.test_loss for h in history], "s-", label="test (test mode)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.plot(epochs, [100 * h.train_accuracy for h in history], "o-", label="train (epoch mean)")
    ax_acc.plot(epochs, [100 * h.test_accuracy for h in history], "s-", label="test (test mode)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("luxc: small CNN on scikit-learn's digits (8×8), AutoXLA")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="digits.png",
                        help="where to write the loss/accuracy PNG (relative to the current directory)")
    parser.add_argument("--mixed-precision", choices=("bf16", "f16"), default=None,
                        help="train in bfloat16 or float16 with float32 master weights")
    args = parser.parse_args()
    plot_path = Path(args.plot).resolve()
    if not plot_path.parent.is_dir():  # checked before training, not after it
        parser.error(f"--plot {args.plot}: the directory {plot_path.parent} does not exist")
    t0 = time.perf_counter()
    history, ts = train(args.epochs, args.batch, args.seed, mixed_precision=args.mixed_precision)
    print(f"test accuracy {history[-1].test_accuracy:.2%} after {args.epochs} epochs "
          f"in {time.perf_counter() - t0:.1f}s (compiles included); {luxc.cache_info(ts)}")
    plot(history, str(plot_path))
    print(f"wrote {plot_path}")


if __name__ == "__main__":
    main()
