"""A small transformer-shaped module whose state_dict matches conftest.model_tensors(): tied lm_head, persistent
and non-persistent buffers, mixed dtypes."""

import torch
from torch import nn


class Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(16, dtype=torch.float64))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(16, 48)
        self.norm = Norm()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 16)
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(16, 64, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as transformers ties word embeddings
        self.register_buffer("position_ids", torch.zeros(32, dtype=torch.int64))
        self.register_buffer("mask", torch.zeros(8, dtype=torch.bool))
        self.register_buffer("codes", torch.zeros(8, dtype=torch.uint8))
        self.register_buffer("rotary", torch.arange(4.0), persistent=False)  # computed, never in checkpoints
