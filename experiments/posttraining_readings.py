"""Readings of a post-training start or result as it is, nothing trained, for
``experiments/posttraining.py``: where GRPO's signal is (``groups_drawn``: which groups' samples
disagree, attribute by attribute) and what count and relation captions fail on (``failures``: how
many objects are drawn, and whether they are the ones named). Each is made once and kept in the
run's ``eval/`` folder as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from transfusion.fileio import atomic_text


def _trainer(run: Path, settings: list, *overrides: str):
    """A ``Posttrainer`` of ``run`` as ``settings`` (``--reward NAME`` and ``posttrain.*`` values)
    would sample it, then ``overrides``; without a KL term, so with no copy of the model."""
    from transfusion.posttrain.grpo import Posttrainer, start_config

    reward = settings[settings.index("--reward") + 1]
    cfg, ckpt = start_config(run, [*(s for s in settings if "=" in s), f"posttrain.reward={reward}", *overrides,
                                   "posttrain.kl=0"])
    return Posttrainer(cfg, ckpt, run)


def groups_drawn(run: Path, settings: list, updates: int) -> dict:
    """What the first ``updates`` updates of ``settings`` draw from ``run`` as it is (the same
    prompts and noise, nothing trained): per attribute the share right and the share of groups
    that disagree on it (only those teach it), and the share of groups whose rewards differ;
    made once, into the run's ``eval/posttraining_groups.json``."""
    out = run / "eval" / "posttraining_groups.json"
    if not out.is_file():
        from transfusion.posttrain.objective import varied_groups

        trainer = _trainer(run, settings)
        group, rows = trainer.cfg.posttrain.group, []
        for step in range(updates):
            prompts, _, images, rewards, _ = trainer.draw(step)
            rows.append({"groups_varied": varied_groups(rewards.tolist(), group),
                         **trainer.policy.judged(prompts, images, group)})
        out.parent.mkdir(exist_ok=True)
        keys = dict.fromkeys(k for r in rows for k in r)  # an attribute no prompt of the first update stated too
        atomic_text(out, json.dumps({k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows)
                                     for k in keys}, indent=1))
    return json.loads(out.read_text())


FAILURES = {"count": ["as many objects as asked", "fewer", "more", "as many of the named colour and shape (count)"],
            "relation": ["two objects", "both named objects (colour and shape)", "in the stated relation",
                         "in the stated relation, of those with both"]}


def failures(run: Path, settings: list, guidance: float, draws: int, captions: int | None = None) -> dict:
    """What the test split's count and relation captions (the first ``captions`` of each kind, or
    all) get from ``run``, ``draws`` samples each, drawn as ``settings`` sample but with
    ``guidance``, in the ``FAILURES`` shares; made once, into the run's eval/."""
    out = run / "eval" / f"posttraining_failures_cfg{guidance:g}.json"
    if not out.is_file():
        import torch

        from transfusion.data.shapes import ShapesDataset
        from transfusion.metrics.shapes_reader import read_image, score
        from transfusion.posttrain.grpo import prompts_of

        trainer = _trainer(run, settings, f"posttrain.guidance={guidance}")
        cfg, shares = trainer.cfg, {}
        test = ShapesDataset("test", cfg.image.size)
        for kind, names in FAILURES.items():
            documents = test.indices_of([kind])[:captions]
            prompts = prompts_of(cfg, "test", draws * len(documents), documents=documents)  # each caption, in turn
            n = len(prompts)
            images = trainer.policy.outputs(trainer.rollout(prompts, torch.Generator().manual_seed(0)))
            found = [(len(read_image(image)), len(p.meta["scene"].objects), score(image, p.meta["scene"]))
                     for p, image in zip(prompts, images)]
            if kind == "count":
                rows = [(drawn == asked, drawn < asked, drawn > asked, s["count"]) for drawn, asked, s in found]
            else:
                rows = [(drawn == 2, s["shape"], s["relation"]) for drawn, _, s in found]
            shares[kind] = dict(zip(names, (sum(r[i] for r in rows) / n for i in range(len(rows[0])))))
        relation = shares["relation"]
        drawn, placed, of_drawn = FAILURES["relation"][1:]
        relation[of_drawn] = relation[placed] / relation[drawn] if relation[drawn] else None
        out.parent.mkdir(exist_ok=True)
        atomic_text(out, json.dumps(shares, indent=1))
    return json.loads(out.read_text())
