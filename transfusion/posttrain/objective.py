"""The pieces of GRPO's objective that every policy shares.

    advantages = group_advantages(rewards, group)           # each sample against its prompt's group
    loss = clipped_objective(ratio, advantages, 0.2).mean() # PPO's clipped surrogate, to minimise
    varied_groups(rewards.tolist(), group)                  # the share of groups that teach anything
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(N,) rewards of N / group prompts' groups -> each sample's standing in its group,
    (r - mean) / (std + 1e-4) (GRPO, Shao et al. 2024, arXiv 2402.03300): a group whose samples
    all score alike teaches nothing."""
    r = rewards.view(-1, group)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)


def clipped_objective(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate, to minimise: max(-A r, -A clip(r, 1 - eps, 1 + eps)) (Schulman et al. 2017)."""
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))


def varied_groups(values: list, group: int) -> float | None:
    """The share of the groups (``group`` consecutive values each) whose values are not all
    equal: a group whose samples all score alike has zero advantages and teaches nothing. Groups
    holding a None (an attribute their prompt does not state) are left out; None if all are."""
    groups = [values[i : i + group] for i in range(0, len(values), group)]
    groups = [g for g in groups if None not in g]
    return sum(len(set(g)) > 1 for g in groups) / len(groups) if groups else None
