"""A character-level GPT on real text that is on every machine: the source of Python's own
standard library (the running interpreter's ``Lib/``, found through ``sysconfig``).

Embedding + learned positions, an ``nn.Stack`` of pre-LN blocks (causal MultiHeadAttention, GELU MLP),
tied or untied head; AdamW with warm-up + cosine decay and gradient clipping (optax); the
compiled training step, optionally in bf16 mixed precision; checkpoints you can resume;
validation loss in bits per character beside the corpus' unigram entropy; a loss plot; a sample.

Run it:   pip install -e ".[examples]" && python examples/charlm.py --out charlm-run
Resume:   python examples/charlm.py --out charlm-run --resume --steps 3000
CI:       python examples/charlm.py --quick --out /tmp/charlm
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc
from luxc import nn
from luxc.training import compute_objective, single_train_step_


@dataclass(frozen=True)
class Config:
    layers: int = 4
    dim: int = 128
    heads: int = 4
    context: int = 128
    batch: int = 32
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    clip: float = 1.0
    tied: bool = False
    bf16: bool = False
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 8
    max_chars: int = 0  # 0: the whole corpus; --quick reads a slice


QUICK = dict(layers=1, dim=32, heads=2, context=32, batch=16, steps=40, warmup=5,
             eval_every=20, eval_batches=2, max_chars=300_000)


# ----------------------------------------------------------------------------- the corpus
class Corpus(NamedTuple):
    train: np.ndarray  # int32 character ids
    validation: np.ndarray
    chars: str  # id -> character
    train_files: int
    validation_files: int


def is_validation(name: str) -> bool:
    """One file in ten, chosen by a hash of its name: the split does not move when a Python
    release adds or removes other files."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10 == 0


def load_corpus(max_chars: int = 0) -> Corpus:
    """The top-level ``.py`` files of the standard library, split by file; characters are
    numbered in order of their code point over the whole corpus."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if not files:
        raise SystemExit("no .py files under sysconfig.get_paths()['stdlib']: this Python has "
                         "no standard-library source to read")
    texts = {"train": [], "validation": []}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts["validation" if is_validation(os.path.basename(path)) else "train"].append(f.read())
    train, val = "".join(texts["train"]), "".join(texts["validation"])
    if max_chars:
        train, val = train[:max_chars], val[: max_chars // 5]
    chars = "".join(sorted(set(train) | set(val)))
    table = {c: i for i, c in enumerate(chars)}

    def encode(s: str) -> np.ndarray:
        return np.fromiter((table[c] for c in s), np.int32, len(s))

    return Corpus(encode(train), encode(val), chars, len(texts["train"]),
                  len(texts["validation"]))


def unigram_bits(tokens: np.ndarray, vocab: int) -> float:
    """Entropy of the character frequencies, in bits per character: the loss of the best model
    that ignores context."""
    p = np.bincount(tokens, minlength=vocab) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def batch_at(tokens: np.ndarray, step: int, cfg: Config, stream: int = 0) -> tuple:
    """Windows of ``context + 1`` characters at random offsets; the offsets depend only on
    ``(seed, stream, step)`` so that a resumed run sees the same batches."""
    rng = np.random.default_rng([cfg.seed, stream, step])
    starts = rng.integers(0, len(tokens) - cfg.context - 1, cfg.batch)
    windows = tokens[starts[:, None] + np.arange(cfg.context + 1)]
    return windows[:, :-1], windows[:, 1:]


# ----------------------------------------------------------------------------- the model
def positions(tokens: jax.Array) -> jax.Array:
    """``0 … T-1`` for every row of a ``(batch, T)`` input."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)


def first(pair: tuple) -> jax.Array:
    """``y`` of attention's ``(y, α)``, Lux's ``WrappedFunction(first)``."""
    return pair[0]


def block(dim: int, heads: int) -> nn.Chain:
    """Pre-LN transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""
    attention = nn.Chain(nn.LayerNorm(dim), nn.MultiHeadAttention(dim, nheads=heads, is_causal=True),
                         first)
    mlp = nn.Chain(nn.LayerNorm(dim), nn.Dense(dim, 4 * dim, jax.nn.gelu), nn.Dense(4 * dim, dim))
    return nn.Chain(nn.SkipConnection(attention, jnp.add), nn.SkipConnection(mlp, jnp.add))


class GPT(nn.AbstractContainerLayer):
    """``(batch, T)`` character ids → ``(batch, T, vocab)`` logits. With ``tied`` the head is
    the transposed token embedding (no ``head`` parameters)."""

    def __init__(self, vocab: int, cfg: Config):
        init = jax.nn.initializers.normal(0.02)  # GPT-2's; Lux's rand32 suits no transformer
        self.embed = nn.Parallel(jnp.add, nn.Embedding(vocab, cfg.dim, init_weight=init),
                                 nn.Chain(positions, nn.Embedding(cfg.context, cfg.dim,
                                                                  init_weight=init)))
        # One block traced, its parameters stacked on a leading axis of size ``layers``.
        self.blocks = nn.Stack(block(cfg.dim, cfg.heads), cfg.layers)
        self.norm = nn.LayerNorm(cfg.dim)
        self.tied = cfg.tied
        self.head = None if cfg.tied else nn.Dense(cfg.dim, vocab)

    def sublayers(self) -> dict[str, nn.AbstractLayer]:
        layers = {"embed": self.embed, "blocks": self.blocks, "norm": self.norm}
        return layers if self.head is None else {**layers, "head": self.head}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        new_st = dict(st)
        h, new_st["embed"] = self.embed(x, ps["embed"], st["embed"])
        h, new_st["blocks"] = self.blocks(h, ps["blocks"], st["blocks"])
        h, new_st["norm"] = self.norm(h, ps["norm"], st["norm"])
        if self.head is None:
            return h @ ps["embed"]["layer_1"]["weight"].T.astype(h.dtype), new_st
        logits, new_st["head"] = self.head(h, ps["head"], st["head"])
        return logits, new_st

    def summary(self) -> str:
        return "GPT(...)"


def objective(model: nn.AbstractLayer, ps: dict, st: dict, data: tuple) -> tuple:
    """Mean next-character cross-entropy, in nats (computed in f32 under bf16 too)."""
    x, y = data
    logits, st = model(x, ps, st)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return jnp.mean(loss), st, {}


def optimizer(cfg: Config) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps,
                                                                              cfg.warmup + 1),
                                                  cfg.lr / 10)
    # Weight decay on the Dense and Embedding weights only, not on biases or LayerNorm scales
    # (the usual GPT recipe). By name, not rank: under nn.Stack a scale has a layer axis too.
    def matrices(ps):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "weight", ps)

    return optax.chain(optax.clip_by_global_norm(cfg.clip),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=matrices))


def compile_options(cfg: Config) -> luxc.CompileOptions:
    return luxc.CompileOptions(mixed_precision="bf16") if cfg.bf16 else luxc.CompileOptions()


# ----------------------------------------------------------------------------- training
@dataclass
class History:
    steps: list[int]
    train_bpc: list[float]
    eval_steps: list[int]
    val_bpc: list[float]
    tokens_per_s: list[float]


def evaluate(ts: luxc.TrainState, corpus: Corpus, cfg: Config) -> float:
    """Validation loss in bits per character over ``eval_batches`` fixed batches."""
    test_ts = ts.replace(states=luxc.testmode(ts.states))
    losses = [compute_objective(luxc.AutoXLA(), objective, batch_at(corpus.validation, i, cfg, 1),
                                test_ts, compile_options=compile_options(cfg))[0]
              for i in range(cfg.eval_batches)]
    return float(np.mean(losses)) / math.log(2)


def make_state(corpus: Corpus, cfg: Config) -> luxc.TrainState:
    model = GPT(len(corpus.chars), cfg)
    ps, st = luxc.setup(jax.random.key(cfg.seed), model)
    return luxc.TrainState(model, ps, st, optimizer(cfg))


def prepare_out(out: Path, cfg: Config, resume: bool) -> tuple[Path, History | None]:
    """Check the output directory before any long work; on ``resume`` return the saved history
    (the configuration must match but for ``steps``)."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise SystemExit(f"--out {out} is not writable")
    ckpt, meta = out / "checkpoint.safetensors", out / "run.json"
    if not resume:
        if ckpt.exists():
            raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or another --out")
        return ckpt, None
    if not (ckpt.exists() and meta.exists()):
        raise SystemExit(f"--resume: no checkpoint in {out} (expected {ckpt.name} and run.json)")
    saved = json.loads(meta.read_text())
    old = {k: v for k, v in saved["config"].items() if k != "steps"}
    new = {k: v for k, v in asdict(cfg).items() if k != "steps"}
    if old != new:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new[k])
        raise SystemExit(f"--resume: the configuration differs from the checkpoint's ({diff})")
    return ckpt, History(**saved["history"])


def save(ckpt: Path, ts: luxc.TrainState, cfg: Config, history: History) -> None:
    luxc.save_state(ckpt, ts)
    tmp = ckpt.with_name("run.json.tmp")
    tmp.write_text(json.dumps({"config": asdict(cfg), "history": asdict(history)}))
    tmp.replace(ckpt.with_name("run.json"))


def train(cfg: Config, out: Path, resume: bool = False, log=print) -> tuple:
    """Train to ``cfg.steps``; returns ``(ts, history, corpus)``."""
    ckpt, history = prepare_out(out, cfg, resume)
    corpus = load_corpus(cfg.max_chars)
    ts = make_state(corpus, cfg)
    if history is not None:
        ts = luxc.load_state(ckpt, ts)
        log(f"resumed from {ckpt} at step {int(ts.step)}")
    history = history or History([], [], [], [], [])
    vocab = len(corpus.chars)
    log(f"corpus: {len(corpus.train):,} training characters ({corpus.train_files} files), "
        f"{len(corpus.validation):,} validation ({corpus.validation_files} files), vocabulary "
        f"{vocab}; unigram entropy {unigram_bits(corpus.train, vocab):.3f} bits/char")
    log(f"model: {nn.parameter_count(ts.model):,} parameters, {cfg.layers} blocks, width "
        f"{cfg.dim}, context {cfg.context}, batch {cfg.batch}{', bf16' if cfg.bf16 else ''}")
    options = compile_options(cfg)
    window, t0, pending = [], time.perf_counter(), []
    log_every = max(1, min(20, cfg.eval_every))
    for step in range(int(ts.step), cfg.steps):
        _, loss, _, ts = single_train_step_(luxc.AutoXLA(), objective, batch_at(corpus.train, step, cfg),
                                            ts, return_gradients=False, compile_options=options)
        pending.append(loss)
        done = step + 1
        if done % log_every == 0 or done == cfg.steps:
            bpc = float(np.mean([float(v) for v in pending])) / math.log(2)
            now = time.perf_counter()
            window.append((len(pending), now - t0))
            # The first window holds the compilation; tokens/s counts the windows after it.
            tps = (len(pending) * cfg.batch * cfg.context / (now - t0)) if len(window) > 1 else 0.0
            history.steps.append(done)
            history.train_bpc.append(bpc)
            history.tokens_per_s.append(tps)
            log(f"step {done:5d}/{cfg.steps}  train {bpc:.3f} bpc  "
                + (f"{tps:,.0f} tokens/s" if tps else f"first {len(pending)} steps "
                   f"{now - t0:.1f} s (compile)"))
            pending, t0 = [], time.perf_counter()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            val = evaluate(ts, corpus, cfg)
            history.eval_steps.append(done)
            history.val_bpc.append(val)
            log(f"step {done:5d}  validation {val:.3f} bpc  (unigram "
                f"{unigram_bits(corpus.train, vocab):.3f})")
            save(ckpt, ts, cfg, history)
            t0 = time.perf_counter()  # evaluation and the checkpoint are not training time
    return ts, history, corpus


# ----------------------------------------------------------------------------- sampling, plot
def sample(ts: luxc.TrainState, corpus: Corpus, cfg: Config, prompt: str = "def ",
           length: int = 300, temperature: float = 0.8, seed: int = 0) -> str:
    """``length`` characters after ``prompt``, each drawn from the model's softmax at
    ``temperature``: the whole loop is one compiled program (a ``fori_loop`` over a sliding
    window of ``context`` characters, left-padded with newlines)."""
    table = {c: i for i, c in enumerate(corpus.chars)}
    pad = table.get("\n", 0)
    ids = [table[c] for c in prompt if c in table][-cfg.context:]
    window = jnp.asarray([pad] * (cfg.context - len(ids)) + ids, jnp.int32)
    model, st = ts.model, luxc.testmode(ts.states)

    @jax.jit
    def run(ps, window, key):
        def body(i, carry):
            window, key, out = carry
            logits, _ = model(window[None], ps, st)
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, logits[0, -1].astype(jnp.float32) / temperature)
            return jnp.append(window[1:], nxt.astype(jnp.int32)), key, out.at[i].set(nxt)

        return jax.lax.fori_loop(0, length, body, (window, key, jnp.zeros(length, jnp.int32)))[2]

    out = np.asarray(run(ts.parameters, window, jax.random.key(seed)))
    return prompt + "".join(corpus.chars[i] for i in out)


def plot(history: History, unigram: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; the figure goes to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(history.steps, history.train_bpc, label="training", lw=1, alpha=0.7)
    ax.plot(history.eval_steps, history.val_bpc, "o-", label="validation", ms=3)
    ax.axhline(unigram, color="gray", ls="--", lw=1, label=f"unigram entropy {unigram:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title("character-level GPT on the Python standard library")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    for field, value in asdict(defaults).items():
        if isinstance(value, bool):
            p.add_argument(f"--{field.replace('_', '-')}", action="store_true")
        else:
            p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=None,
                           help=f"default {value}")
    p.add_argument("--quick", action="store_true", help="a tiny model on a slice (CI, < 1 min)")
    p.add_argument("--out", type=Path, default=Path("charlm-run"),
                   help="directory for the checkpoint, run.json, the plot and the sample")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--sample-length", type=int, default=300)
    args = p.parse_args(argv)
    cfg = replace(defaults, **QUICK) if args.quick else defaults
    given = {k: getattr(args, k) for k in asdict(defaults) if getattr(args, k) not in (None, False)}
    return replace(cfg, **given), args


def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_args(argv)
    ts, history, corpus = train(cfg, args.out, args.resume)
    unigram = unigram_bits(corpus.train, len(corpus.chars))
    plot(history, unigram, args.out / "loss.png")
    text = sample(ts, corpus, cfg, length=args.sample_length, seed=cfg.seed)
    (args.out / "sample.txt").write_text(text)
    print(f"validation {history.val_bpc[-1]:.3f} bits/char (unigram entropy {unigram:.3f}); "
          f"plot {args.out / 'loss.png'}\n--- sample ---\n{text}")
    return {"val_bpc": history.val_bpc[-1], "unigram_bpc": unigram, "sample": text,
            "history": history}


if __name__ == "__main__":
    # This script owns its process: keep the memory each step frees for the next step instead of
    # faulting it in again (a third of the step's time here; see luxc.retain_host_memory).
    luxc.retain_host_memory()
    main()
