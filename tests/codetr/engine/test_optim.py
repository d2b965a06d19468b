"""The optimizer: AdamW with the fused kernel where the parameters allow it, the same update as the unfused one."""
from __future__ import annotations

import copy

import torch
from torch import nn

from codetr.config.run_schema import TrainConfig
from codetr.engine.optim import build_optimizer, build_param_groups, fused_supported


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, 8)      # in the lr-multiplied group (train.lr_mult_keys)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.backbone(x)))


def test_fused_adamw_on_the_cpu_takes_the_same_steps_as_the_unfused_one():
    torch.manual_seed(0)
    model = _Tiny()
    other, start = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.05, lr_mult_value=0.1)
    fused = build_optimizer(model, cfg)
    assert [g["fused"] for g in fused.param_groups] == [True, True]
    plain = torch.optim.AdamW(build_param_groups(other, cfg.lr, cfg.weight_decay, cfg.lr_mult_keys, cfg.lr_mult_value),
                              lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    x = torch.randn(16, 6)
    for _ in range(5):
        for m, opt in ((model, fused), (other, plain)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for (name, a), b, a0 in zip(model.named_parameters(), other.parameters(), start.parameters()):
        assert (a - a0).abs().max() > 1e-4, name                       # it trained
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_parameters_the_kernel_cannot_take_keep_the_unfused_update():
    assert fused_supported([{"params": [nn.Parameter(torch.zeros(2))]}])
    assert not fused_supported([{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}])
    assert not fused_supported([])
