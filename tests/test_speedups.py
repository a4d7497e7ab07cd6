"""The trunk's products in bf16 or int8 (``--precision``): the fp32 model is left as it was, only
the trunk's linear layers change, what it samples stays near the fp32 reference, and ``auto``
picks bf16 only on a CPU that multiplies bf16 natively."""

import pytest
import torch

from transfusion.checkpoint import load_checkpoint
from transfusion.cli import main as cli_main
from transfusion.data.document import Text
from transfusion.engine import Engine, Request, tasks
from transfusion.engine import speedups
from transfusion.engine.speedups import Bf16Linear, bf16_trunk, native_bf16, quantized_trunk, resolved_precision

FAST_LINEAR = {"int8": (quantized_trunk, torch.ao.nn.quantized.dynamic.Linear), "bf16": (bf16_trunk, Bf16Linear)}
# mean absolute pixel difference from fp32 (pixels in [-1, 1]) and largest next-token logit difference
# (a share of the logits' spread) allowed on the debug run; measured on the tiny run (dpm++ 25 steps):
# int8 0.004-0.010, where a few regions diverge; bf16 0.0002-0.0004
TOLERANCE = {"int8": (0.05, 0.05), "bf16": (0.01, 0.01)}


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_only_the_trunk_s_linear_layers_of_a_copy_change(debug_run, precision):
    loaded = load_checkpoint(debug_run)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    make, fast_linear = FAST_LINEAR[precision]
    fast = make(loaded.model)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())  # the original is untouched
    assert any(isinstance(m, fast_linear) for m in fast.trunk.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in fast.trunk.modules())
    linear = lambda module: sum(isinstance(m, torch.nn.Linear) for m in module.modules())  # noqa: E731
    assert linear(fast.image) == linear(loaded.model.image) > 0  # the image layers stay fp32
    assert torch.equal(fast.lm_head.weight, loaded.model.lm_head.weight)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_images_and_logits_stay_near_the_fp32_reference(debug_run, precision):
    loaded = load_checkpoint(debug_run)
    fast = speedups.with_precision(loaded, precision)
    pixels_tol, logits_tol = TOLERANCE[precision]
    req = Request(sampler="dpm++", steps=4, guidance=3.0, seed=0)
    captions = ["a red circle", "two blue squares at the top"]
    engine, fast_engine = (Engine(m, loaded.tokenizer, loaded.autoencoder, loaded.config)
                           for m in (loaded.model, fast.model))
    reference, made = (tasks.text_to_image(e, captions, req) for e in (engine, fast_engine))
    assert made.request == reference.request
    for a, b in zip(reference.images, made.images):
        assert 0 < float((a - b).abs().mean()) < pixels_tol
    with torch.no_grad():
        _, _, hidden = engine.prefill([[Text("a red")]])
        _, _, fast_hidden = fast_engine.prefill([[Text("a red")]])
        logits, fast_logits = loaded.model.logits(hidden), fast.model.logits(fast_hidden)
    assert float((logits - fast_logits).abs().max()) < logits_tol * float(logits.std())


def test_bf16_linear_is_the_linear_in_bf16():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    fast = Bf16Linear(linear)
    with torch.no_grad():
        out = fast(x)
        exact = torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16()).float()
        reference = linear(x)
    assert out.dtype == torch.float32 and out.shape == (5, 32)
    assert torch.equal(out, exact)
    assert float((out - reference).norm() / reference.norm()) < 1e-2


def test_auto_is_bf16_only_on_a_cpu_that_multiplies_bf16_natively(tmp_path, monkeypatch):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\nbugs\t\t: avx512_bf16\n")
    assert native_bf16(with_bf16) and not native_bf16(without) and not native_bf16(tmp_path / "absent")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(speedups, "native_bf16", lambda native=native: native)
        assert resolved_precision("auto", cpu) == expected
        assert resolved_precision("auto", cuda) == "fp32"  # a GPU keeps fp32 unless asked
        assert resolved_precision("bf16", cpu) == "bf16" and resolved_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="int8 dynamic quantisation runs on the CPU"):
        resolved_precision("int8", cuda)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolved_precision("fp16", cpu)


def test_fp32_leaves_the_loaded_model_as_it_is(debug_run):
    loaded = load_checkpoint(debug_run)
    assert speedups.with_precision(loaded, "fp32") is loaded


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_the_precision_flag_generates(debug_run, tmp_path, precision):
    cli_main(["generate", str(debug_run), "a red circle", "--precision", precision, "--steps", "2", "--n", "2",
              "--out", str(tmp_path / "gen")])
    assert len(list((tmp_path / "gen").glob("*.png"))) >= 2
