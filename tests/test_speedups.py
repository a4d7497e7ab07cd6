"""int8 dynamic quantisation of the trunk (``--int8``): the fp32 model is left as it was, only the
trunk's linear layers change, and what it samples stays near the fp32 reference."""

import torch

from transfusion.checkpoint import load_checkpoint
from transfusion.cli import main as cli_main
from transfusion.data.document import Text
from transfusion.engine import Engine, Request, tasks
from transfusion.engine.speedups import quantized_trunk, with_int8_trunk


def test_int8_changes_only_the_trunk_s_linear_layers_of_a_copy(debug_run):
    loaded = load_checkpoint(debug_run)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    quantized = quantized_trunk(loaded.model)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())  # the original is untouched
    int8_linear = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, int8_linear) for m in quantized.trunk.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.trunk.modules())
    linear = lambda module: sum(isinstance(m, torch.nn.Linear) for m in module.modules())  # noqa: E731
    assert linear(quantized.image) == linear(loaded.model.image) > 0  # the image layers stay fp32


def test_int8_images_and_captions_stay_near_the_fp32_reference(debug_run):
    """Tolerance: the debug run's images within 0.05 mean absolute difference of the fp32 ones
    (pixels in [-1, 1]; measured 0.001-0.012 on the tiny run, where a few regions diverge) and
    next-token logits within 5% of their spread."""
    loaded = load_checkpoint(debug_run)
    int8 = with_int8_trunk(loaded)
    req = Request(sampler="dpm++", steps=4, guidance=3.0, seed=0)
    captions = ["a red circle", "two blue squares at the top"]
    reference = tasks.text_to_image(Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config),
                                    captions, req)
    fast = tasks.text_to_image(Engine(int8.model, int8.tokenizer, int8.autoencoder, int8.config), captions, req)
    assert fast.request == reference.request
    for a, b in zip(reference.images, fast.images):
        assert 0 < float((a - b).abs().mean()) < 0.05
    engine, fast_engine = (Engine(m, loaded.tokenizer, loaded.autoencoder, loaded.config)
                           for m in (loaded.model, int8.model))
    with torch.no_grad():
        _, _, hidden = engine.prefill([[Text("a red")]])
        _, _, fast_hidden = fast_engine.prefill([[Text("a red")]])
        logits, fast_logits = loaded.model.logits(hidden), int8.model.logits(fast_hidden)
    assert float((logits - fast_logits).abs().max()) < 0.05 * float(logits.std())


def test_the_int8_flag_generates(debug_run, tmp_path):
    cli_main(["generate", str(debug_run), "a red circle", "--int8", "--steps", "2", "--n", "2", "--out",
              str(tmp_path / "gen")])
    assert len(list((tmp_path / "gen").glob("*.png"))) >= 2
