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

Every learnable layer is ``nn.Linear``, ``nn.Conv2d``, ``nn.GroupNorm`` or ``nn.LayerNorm``,
so Opacus computes per-sample gradients without ``ModuleValidator.fix``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SemioFedError
from .features import STREAM_NAMES, STREAM_SHAPES, stream_adjacency
from .labels import NUM_CLASSES

#: Bump whenever the forward computation changes (part of :func:`architecture_hash`).
ARCH_VERSION = "semionet-1"


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
    streams: tuple[str, ...] = STREAM_NAMES


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


class SemioNet(nn.Module):
    """Multi-stream encoder, gated fusion, detection and type heads (see module docstring)."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        unknown = set(cfg.streams) - set(STREAM_NAMES)
        if unknown:
            raise ValueError(f"unknown streams {sorted(unknown)}")
        self.cfg = cfg
        d = cfg.embed_dim
        self.encoders = nn.ModuleDict({s: StreamEncoder(s, cfg) for s in cfg.streams})
        self.gates = nn.ModuleDict({s: nn.Linear(d, 1) for s in cfg.streams})
        self.norm = nn.LayerNorm(d)
        self.hidden = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.detect_head = nn.Linear(d, 1)
        self.type_head = nn.Linear(d, NUM_CLASSES)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        embs, logits, present = [], [], []
        for s in self.cfg.streams:
            emb, here = self.encoders[s](batch[f"x_{s}"], batch[f"m_{s}"])
            out[f"emb_{s}"] = emb
            embs.append(emb)
            logits.append(self.gates[s](emb))
            present.append(here)
        stacked = torch.stack(embs, dim=1)  # (B, S, D)
        here = torch.stack(present, dim=1)  # (B, S) bool
        gate_logits = torch.cat(logits, dim=1).masked_fill(~here, -1e9)
        gates = torch.softmax(gate_logits, dim=1) * here.to(stacked.dtype)
        fused = (gates.unsqueeze(-1) * stacked).sum(dim=1)
        h = self.dropout(F.relu(self.hidden(self.norm(fused))))
        out["detect_logit"] = self.detect_head(h).squeeze(-1)
        out["type_logits"] = self.type_head(h)
        out["fused"] = fused
        out["gates"] = gates
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def architecture_hash(cfg: ModelConfig) -> str:
    """sha256 of the canonical config, the stream layout and :data:`ARCH_VERSION`."""
    doc = {
        "arch_version": ARCH_VERSION,
        "config": asdict(cfg),
        "stream_shapes": {s: list(STREAM_SHAPES[s]) for s in STREAM_NAMES},
        "num_classes": NUM_CLASSES,
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
