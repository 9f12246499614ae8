"""SemioNet: the multi-stream seizure model (< 1 M parameters, Opacus-compatible).

Each stream of :mod:`.features` has its own compact spatio-temporal graph encoder in the
spirit of ST-GCN / EfficientGCN: per block, a graph convolution — a 1×1 convolution to
``K`` channel groups, each mixed over the nodes by a *constant* power of the normalised
skeleton adjacency (``Â⁰ = I, Â¹, …``; a non-persistent buffer, never learned) — then a
temporal convolution (kernel ``k×1``, strided), GroupNorm (never BatchNorm) and a residual.
Input channels are positions plus masked frame-to-frame velocities. The motion stream has
its regions as channels on a single node, which makes its blocks plain temporal convolutions.

Missing data: activations are zeroed at absent frames after every block, each stream is
pooled by a masked mean over time (and a mean over nodes), and a stream absent from the
whole window gets a fusion weight of exactly zero. Fusion is gated: a softmax over per-stream
gate logits restricted to the present streams weights the stream embeddings. Two heads read
the fused embedding: seizure-or-PNES vs background (one logit) and type (``NUM_CLASSES``).

Semiology stream (``"semiology"`` in ``streams``): the fixed quantified signs of
:mod:`.semiology_features` (no learned or data-derived normalisation) through a two-layer
MLP; present whenever any input stream is.

Pretrained and frozen parts: ``pretrained`` names (by SHA-256) a weights file of
:data:`PRETRAINED_DIR` (or ``$SEMIOFED_PRETRAINED_DIR``) — the coordinator's round-0 model,
pretrained on public simulator data (``semiofed server pretrain``) — loaded at construction
after its hash is checked; parameters under the ``frozen`` name prefixes get
``requires_grad=False``, so training, the federation (which exchanges trainable parameters
only) and the allowlist leave them out. Both are fields of the configuration, so the
architecture hash an officer approves covers them.

Cached path: :meth:`SemioNet.encode` is the encoders' part of the forward pass (per-stream
embeddings and presence); ``forward`` runs the gated fusion and heads on it, or on a batch's
``emb``/``present`` (:data:`EMBEDDINGS`, :data:`PRESENCE`) when the caller precomputed them
with :func:`embed_windows`. With frozen encoders (:meth:`SemioNet.embedding_key` not None)
a window's embeddings depend only on the window and the encoder weights, so a site computes
them once and trains and evaluates the trainable top on them: the same function (same
modules, same state-dict names, same architecture hash), without the encoders' cost.

Every learnable layer is ``nn.Linear``, ``nn.Conv2d``, ``nn.GroupNorm`` or ``nn.LayerNorm``,
so Opacus computes per-sample gradients without ``ModuleValidator.fix``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SemioFedError
from .features import STREAM_NAMES, STREAM_SHAPES, stream_adjacency
from .labels import IGNORE_INDEX, NUM_CLASSES
from .semiology_features import N_FEATURES, semiology_features

#: Bump whenever the forward computation changes (part of :func:`architecture_hash`).
ARCH_VERSION = "semionet-2"
SEMIOLOGY = "semiology"
MODEL_STREAMS: tuple[str, ...] = (*STREAM_NAMES, SEMIOLOGY)
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_ENV = "SEMIOFED_PRETRAINED_DIR"
#: Batch keys of precomputed stream embeddings (:meth:`SemioNet.encode`) and their presence.
EMBEDDINGS, PRESENCE = "emb", "present"


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, ...] = (24, 32, 48)  # per graph block of a skeleton stream
    strides: tuple[int, ...] = (3, 2, 2)  # temporal stride per block (75 → 25 → 13 → 7 frames)
    motion_channels: tuple[int, ...] = (32, 32)
    motion_strides: tuple[int, ...] = (3, 2)
    temporal_kernel: int = 7
    graph_hops: int = 2  # adjacency powers 0..graph_hops
    embed_dim: int = 64
    groups: int = 8  # GroupNorm groups
    velocity_scale: float = 10.0  # velocities are small per frame: bring them to position scale
    dropout: float = 0.1  # before the heads
    streams: tuple[str, ...] = STREAM_NAMES  # of MODEL_STREAMS
    semiology_hidden: int = 64  # width of the semiology stream's MLP
    pretrained: str = ""  # SHA-256 of the round-0 weights file (see module docstring)
    frozen: tuple[str, ...] = ()  # parameter name prefixes not trained, e.g. "encoders"


def _adjacency_powers(stream: str, hops: int) -> Tensor:
    a = stream_adjacency(stream)
    powers = [np.eye(a.shape[0], dtype=np.float32)]
    for _ in range(hops):
        powers.append(powers[-1] @ a)
    return torch.from_numpy(np.stack(powers).astype(np.float32))


class GraphTemporalBlock(nn.Module):
    """Strided temporal conv, then graph conv over constant adjacency powers; GroupNorm, residual.

    The graph convolution mixes the nodes first (``x @ Âᵏ`` for each power, concatenated
    along channels) and then applies a 1×1 convolution: the same operator as ``Σₖ Wₖ x Âᵏ``,
    with the node mixing done on the narrower input.
    """

    def __init__(self, c_in: int, c_out: int, adj: Tensor, kernel: int, stride: int, groups: int):
        super().__init__()
        self.register_buffer("adj", adj, persistent=False)  # (K, V, V), constant
        self.temporal = nn.Conv2d(
            c_in, c_out, kernel_size=(kernel, 1), stride=(stride, 1), padding=(kernel // 2, 0)
        )
        self.norm1 = nn.GroupNorm(min(groups, c_out), c_out)
        self.graph = nn.Conv2d(adj.shape[0] * c_out, c_out, kernel_size=1)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.residual = nn.Conv2d(c_in, c_out, kernel_size=1, stride=(stride, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, V)
        z = F.relu(self.norm1(self.temporal(x)))
        z = torch.cat([z @ a for a in self.adj], dim=1)
        z = self.norm2(self.graph(z))
        return F.relu(z + self.residual(x))


class StreamEncoder(nn.Module):
    """One stream (B, T, V, C) with mask (B, T) → embedding (B, D) and presence (B,)."""

    def __init__(self, stream: str, cfg: ModelConfig):
        super().__init__()
        nodes, chans = STREAM_SHAPES[stream]
        self.is_motion = stream == "motion"
        if self.is_motion:  # regions as channels on one node
            adj = torch.ones(1, 1, 1)
            widths, strides, c_in = cfg.motion_channels, cfg.motion_strides, 2 * nodes * chans
        else:
            adj = _adjacency_powers(stream, cfg.graph_hops)
            widths, strides, c_in = cfg.channels, cfg.strides, 2 * chans
        if len(widths) != len(strides):
            raise ValueError(f"{stream}: as many strides as blocks needed")
        self.strides = tuple(strides)
        self.velocity_scale = cfg.velocity_scale
        blocks = []
        for width, stride in zip(widths, strides, strict=True):
            blocks.append(
                GraphTemporalBlock(c_in, width, adj, cfg.temporal_kernel, stride, cfg.groups)
            )
            c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Linear(c_in, cfg.embed_dim)

    def forward(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        if self.is_motion:
            x = x.flatten(2).unsqueeze(2)  # (B, T, 1, R*C)
        x = x.permute(0, 3, 1, 2) * m[:, None, :, None]  # (B, C, T, V), absent frames zeroed
        both = (m[:, 1:] * m[:, :-1])[:, None, :, None]
        vel = F.pad((x[:, :, 1:] - x[:, :, :-1]) * both, (0, 0, 1, 0)) * self.velocity_scale
        h = torch.cat([x, vel], dim=1).contiguous()  # Opacus unfolds assume contiguous input
        for block, stride in zip(self.blocks, self.strides, strict=True):
            h = block(h)
            m = m[:, ::stride]
            h = h * m[:, None, :, None]
        count = m.sum(dim=1)
        pooled = h.mean(dim=3).sum(dim=2) / count.clamp(min=1.0)[:, None]
        return self.proj(pooled), count > 0


class SemiologyEncoder(nn.Module):
    """The semiology-feature stream: a batch of windows → embedding (B, D) and presence (B,)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden = nn.Linear(N_FEATURES, cfg.semiology_hidden)
        self.proj = nn.Linear(cfg.semiology_hidden, cfg.embed_dim)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        feats = semiology_features(batch)
        here = torch.stack([batch[f"m_{s}"].amax(dim=1) for s in STREAM_NAMES], 1).amax(1) > 0
        return self.proj(F.relu(self.hidden(feats))), here


def _pretrained_file(digest: str) -> Path:
    dirs = [Path(d) for d in (os.environ.get(PRETRAINED_ENV), PRETRAINED_DIR) if d]
    for folder in dirs:
        path = folder / f"{digest}.safetensors"
        if path.is_file():
            return path
    raise SemioFedError(
        f"[model] pretrained = {digest!r}: no {digest}.safetensors in {', '.join(map(str, dirs))}"
    )


@lru_cache(maxsize=4)
def _read_pretrained(digest: str) -> bytes:
    data = _pretrained_file(digest).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise SemioFedError(f"[model] pretrained = {digest!r}: the file's SHA-256 differs")
    return data


def load_pretrained(digest: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict and metadata (the public pretraining recipe) of a pretrained weights file."""
    from safetensors.torch import load

    data = _read_pretrained(digest)
    header = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header
    meta = json.loads(data[8 : 8 + header]).get("__metadata__", {})
    return load(data), meta


def pretraining_statement(cfg: ModelConfig) -> dict[str, Any] | None:
    """What a model card declares about the round-0 weights: their SHA-256, the frozen
    prefixes and the public pretraining recipe; None without pretraining."""
    if not cfg.pretrained:
        return None
    meta = load_pretrained(cfg.pretrained)[1]
    return {
        "sha256": cfg.pretrained,
        "frozen": list(cfg.frozen),
        "recipe": json.loads(meta.get("recipe", "{}")),
    }


class SemioNet(nn.Module):
    """Multi-stream encoder, gated fusion, detection and type heads (see module docstring)."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        unknown = set(cfg.streams) - set(MODEL_STREAMS)
        if unknown:
            raise ValueError(f"unknown streams {sorted(unknown)}")
        self.cfg = cfg
        d = cfg.embed_dim
        self.encoders = nn.ModuleDict(
            {
                s: SemiologyEncoder(cfg) if s == SEMIOLOGY else StreamEncoder(s, cfg)
                for s in cfg.streams
            }
        )
        self.gates = nn.ModuleDict({s: nn.Linear(d, 1) for s in cfg.streams})
        self.norm = nn.LayerNorm(d)
        self.hidden = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.detect_head = nn.Linear(d, 1)
        self.type_head = nn.Linear(d, NUM_CLASSES)
        if cfg.pretrained:
            self.load_state_dict(load_pretrained(cfg.pretrained)[0])
        self._freeze(cfg.frozen)

    def _freeze(self, prefixes: tuple[str, ...]) -> None:
        names = [n for n, _ in self.named_parameters()]
        for prefix in prefixes:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names):
                raise ValueError(f"frozen prefix {prefix!r} matches no parameter")
        for name, p in self.named_parameters():
            if any(name == f or name.startswith(f + ".") for f in prefixes):
                p.requires_grad_(False)

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-stream embeddings (B, S, D) and presence (B, S) bool of a batch of windows,
        streams in ``cfg.streams`` order: what the encoders compute."""
        embs, present = [], []
        for s in self.cfg.streams:
            if s == SEMIOLOGY:
                emb, here = self.encoders[s](batch)
            else:
                emb, here = self.encoders[s](batch[f"x_{s}"], batch[f"m_{s}"])
            embs.append(emb)
            present.append(here)
        return torch.stack(embs, dim=1), torch.stack(present, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Outputs of a batch of windows; a batch with ``emb``/``present`` (the
        :meth:`encode` of its windows, e.g. from a site's embedding cache) skips the
        encoders and runs the same fusion and heads on them."""
        if EMBEDDINGS in batch:
            stacked, here = batch[EMBEDDINGS], batch[PRESENCE].bool()
        else:
            stacked, here = self.encode(batch)
        out: dict[str, Tensor] = {f"emb_{s}": stacked[:, i] for i, s in enumerate(self.cfg.streams)}
        logits = [self.gates[s](stacked[:, i]) for i, s in enumerate(self.cfg.streams)]
        gate_logits = torch.cat(logits, dim=1).masked_fill(~here, -1e9)
        gates = torch.softmax(gate_logits, dim=1) * here.to(stacked.dtype)
        fused = (gates.unsqueeze(-1) * stacked).sum(dim=1)
        h = self.dropout(F.relu(self.hidden(self.norm(fused))))
        out["detect_logit"] = self.detect_head(h).squeeze(-1)
        out["type_logits"] = self.type_head(h)
        out["fused"] = fused
        out["gates"] = gates
        return out

    def embedding_key(self) -> str | None:
        """The key of this model's window embeddings when its encoders are frozen (every
        encoder parameter without gradient): SHA-256 of the pretrained digest, the
        :func:`architecture_hash` and the encoders' actual weights, so embeddings made with
        other encoder weights never match; None when the encoders train."""
        enc = dict(self.encoders.named_parameters())
        if any(p.requires_grad for p in enc.values()):
            return None
        h = hashlib.sha256(f"{self.cfg.pretrained}|{architecture_hash(self.cfg)}|".encode())
        for name, p in sorted(enc.items()):
            h.update(name.encode() + b"\0" + p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


@torch.no_grad()
def embed_windows(
    model: SemioNet, batches: Iterable[dict[str, Tensor]]
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`SemioNet.encode` of every window of ``batches`` (no gradient, eval mode):
    embeddings (N, S, D) float32 and presence (N, S) bool."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    embs, present = [], []
    for batch in batches:
        e, h = model.encode({k: v.to(dev) for k, v in batch.items()})
        embs.append(e.cpu().numpy())
        present.append(h.cpu().numpy())
    model.train(was_training)
    s, d = len(model.cfg.streams), model.cfg.embed_dim
    if not embs:
        return np.zeros((0, s, d), np.float32), np.zeros((0, s), bool)
    return np.concatenate(embs), np.concatenate(present)


@torch.no_grad()
def model_outputs(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]
) -> dict[str, np.ndarray]:
    """Detection probability, type logits and fused embedding of every window of
    ``batches`` (model inputs: windows or cached embeddings), in order; the one prediction
    loop of site analysis, calibration and evaluation (``client/evaluation.py``; here, not in
    :mod:`.analysis`, so that a training message does not import the analysis stack)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"detect_prob": [], "type_logits": [], "fused": []}
    for batch in batches:
        out = model({k: v.to(dev) for k, v in batch.items()})
        parts["detect_prob"].append(torch.sigmoid(out["detect_logit"]).cpu().numpy())
        parts["type_logits"].append(out["type_logits"].cpu().numpy())
        parts["fused"].append(out["fused"].cpu().numpy())
    model.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in parts.items()}


def predict_windows(
    model: nn.Module,
    x: dict[str, np.ndarray],
    mask: dict[str, np.ndarray],
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Model outputs for windows ``x``/``mask`` ({stream: (N, T, V, C)} / (N, T)), in batches."""
    n = len(next(iter(mask.values())))
    batches = (
        {
            **{f"x_{s}": torch.tensor(x[s][i : i + batch_size]) for s in STREAM_NAMES},
            **{f"m_{s}": torch.tensor(mask[s][i : i + batch_size]) for s in STREAM_NAMES},
        }
        for i in range(0, n, batch_size)
    )
    return model_outputs(model, batches)


def loss_per_window(out: dict[str, Tensor], batch: dict[str, Tensor], type_weight: float) -> Tensor:
    """BCE on the detection logit + ``type_weight`` · CE on the type logits (ignored labels add 0)."""
    bce = F.binary_cross_entropy_with_logits(
        out["detect_logit"], batch["y_detect"].to(out["detect_logit"].dtype), reduction="none"
    )
    ce = F.cross_entropy(
        out["type_logits"], batch["y_type"], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return bce + type_weight * ce


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def architecture_hash(cfg: ModelConfig) -> str:
    """sha256 of the canonical config, the stream layout and :data:`ARCH_VERSION`."""
    doc = {
        "arch_version": ARCH_VERSION,
        "config": asdict(cfg),
        "stream_shapes": {s: list(STREAM_SHAPES[s]) for s in STREAM_NAMES},
        "num_classes": NUM_CLASSES,
        "semiology_features": N_FEATURES,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cpu``; ``cuda`` (error when unavailable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SemioFedError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise SemioFedError(f"--device must be auto, cpu or cuda, got {name!r}")
