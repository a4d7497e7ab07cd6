"""The config's field roles and merge rules, its constrained strings, and configs written before
the image section was split (a run's config.yaml, a checkpoint's, a user's YAML file)."""

import dataclasses

import pytest
import yaml

from transfusion.config import Config, config_yaml, from_dict, load_config, resumed, to_dict
from transfusion.samplers import OBJECTIVE_SAMPLERS, SAMPLER_STEPS, check_sampling


def test_every_field_has_one_role_and_the_lm_fields_are_architecture():
    roles = {}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            roles[f"{section.name}.{f.name}"] = f.metadata["role"]
            assert not f.metadata["lm"] or f.metadata["role"] == "architecture"
    assert set(roles.values()) == {"architecture", "execution", "sampling", "recipe"}
    assert roles["model.dim"] == roles["image.patch_size"] == roles["autoencoder.name"] == "architecture"
    assert roles["diffusion.objective"] == "architecture" and roles["diffusion.loss_weight"] == "recipe"
    assert roles["model.attention"] == roles["train.steps"] == roles["train.precision"] == "execution"
    assert {k for k, r in roles.items() if r == "sampling"} == {f"sampling.{k}" for k in
                                                               ("sampler", "steps", "guidance", "clip_sample")}


def test_a_resumed_run_takes_execution_and_sampling_fields_and_refuses_any_other_change():
    saved = load_config("debug")
    new = load_config("debug", overrides=["train.steps=99", "model.attention=chunked", "sampling.guidance=5",
                                          "train.log_every=1"])
    merged = resumed(saved, new, "runs/x")
    assert (merged.train.steps, merged.model.attention, merged.sampling.guidance) == (99, "chunked", 5.0)
    assert to_dict(merged) == to_dict(new)
    for change in ("model.dim=32", "optim.lr=0.1", "data.seq_len=64", "autoencoder.steps=3", "train.seed=1"):
        with pytest.raises(ValueError, match=f"runs/x holds a run with another config .*{change.split('=')[0]}"):
            resumed(saved, load_config("debug", overrides=[change]), "runs/x")


def test_constrained_strings_are_checked_as_read_and_when_set_in_code():
    with pytest.raises(ValueError, match="'image.objective' must be one of 'diffusion', 'tokens', got 'pixels'"):
        load_config("debug", overrides=["image.objective=pixels"])
    with pytest.raises(ValueError, match="'sampling.sampler' must be one of"):
        load_config("debug", overrides=["sampling.sampler=lms"])
    cfg = load_config("debug")
    cfg.train.precision = "fp16"
    with pytest.raises(ValueError, match="'train.precision' must be one of 'fp32', 'bf16'"):
        from_dict(to_dict(cfg))


def test_the_sampler_table_matches_the_config_s_sampler_names_and_the_objective_is_checked_at_the_start():
    from transfusion.config import Sampler

    named = set(Sampler.__args__) - {"auto"}
    assert named == set(SAMPLER_STEPS) == {s for objective in OBJECTIVE_SAMPLERS.values() for s in objective}
    check_sampling(load_config("debug", overrides=["sampling.sampler=dpm++", "sampling.steps=25"]))
    with pytest.raises(ValueError, match="sampler 'euler' does not sample diffusion.objective=ddpm"):
        check_sampling(load_config("debug", overrides=["sampling.sampler=euler"]))
    with pytest.raises(ValueError, match="ddim needs a step count that divides"):
        check_sampling(load_config("debug", overrides=["sampling.sampler=ddim", "sampling.steps=30"]))


def test_configs_written_before_the_split_load_with_every_value_in_its_new_place(tmp_path):
    old = to_dict(load_config("tiny"))
    new_values = {"autoencoder": old.pop("autoencoder"), "sampling": old.pop("sampling")}
    old["image"].update({"autoencoder": "runs/ae", "clip_sample": 2.0, **{f"ae_{k}": v for k, v in
                                                                         new_values["autoencoder"].items()
                                                                         if k != "name"}})
    old["image"]["ae_steps"] = 7
    old["diffusion"].update({"sampler": "ddim", "sample_steps": 50, "guidance": 4.0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    for cfg in (from_dict(yaml.safe_load(path.read_text())), load_config(files=[path])):
        assert (cfg.autoencoder.name, cfg.autoencoder.steps, cfg.autoencoder.latent_channels) == ("runs/ae", 7, 4)
        assert (cfg.sampling.sampler, cfg.sampling.steps, cfg.sampling.guidance, cfg.sampling.clip_sample) == (
            "ddim", 50, 4.0, 2.0)
        assert "autoencoder" not in to_dict(cfg)["image"] and "sampler" not in to_dict(cfg)["diffusion"]
    assert load_config("debug", overrides=["image.autoencoder=train"]).autoencoder.name == "train"
    assert from_dict(yaml.safe_load(config_yaml(cfg))) == cfg
