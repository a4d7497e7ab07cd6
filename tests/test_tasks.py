"""Every front-end (the CLI, Pipeline, the demo, evaluation) is an adapter over the task layer:
for the same seed each gives what the task function gives."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image as PILImage

from transfusion.checkpoint import load_checkpoint
from transfusion.data.document import Image, Text
from transfusion.engine import Engine, Request, tasks
from transfusion.engine.speedups import with_precision
from transfusion.fileio import to_uint8

STEPS, SEED, N = 2, 5, 2
CAPTION = "a red circle"


@pytest.fixture(scope="module")
def run(debug_run):
    return debug_run, load_checkpoint(debug_run)


@pytest.fixture(scope="module")
def picture(run, tmp_path_factory):
    """A test image as a file (for the CLI) and as the run's pixels (for the library)."""
    from transfusion.data.ondisk import load_image

    path = tmp_path_factory.mktemp("in") / "in.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path, load_image(path, run[1].config.image.size)


def engine_of(loaded):
    return Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config)


def as_uint8(images):
    return [to_uint8(x) for x in images]


def png(path):
    return np.asarray(PILImage.open(path).convert("RGB"))


def from_data_url(url):
    return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


# ---------------------------------------------------------------- what each task gives
def task_output(task, loaded, picture):
    engine = engine_of(loaded)
    req = Request(steps=STEPS, seed=SEED, max_new_tokens=4, max_images=2)
    if task == "t2i":
        return as_uint8(tasks.text_to_image(engine, [CAPTION] * N, req, interactive=True).images)
    if task == "caption":
        return tasks.caption(engine, [[Image(picture)]], Request(max_new_tokens=4, seed=SEED)).texts
    if task == "continue":
        done = tasks.continue_documents(engine, [[Text(CAPTION)]], req, interactive=True)
        return [(s.text, as_uint8(s.images)) for s in done.samples]
    return as_uint8(tasks.edit(engine, [picture] * N, ["make it blue"] * N, req, interactive=True).images)


# ---------------------------------------------------------------- what each front-end gives
def cli_output(task, folder, loaded, path, tmp_path):
    from transfusion.cli import main as cli

    out = tmp_path / "out"
    common = ["--steps", str(STEPS), "--seed", str(SEED)]
    if task == "t2i":
        cli(["generate", str(folder), CAPTION, "--n", str(N), *common, "--out", str(out)])
        return [png(out / f"{i:03d}.png") for i in range(N)]
    if task == "caption":
        cli(["caption", str(folder), str(path), "--max-new-tokens", "4", "--seed", str(SEED),
             "--out", str(tmp_path / "c.json")])
        return [r["caption"] for r in json.loads((tmp_path / "c.json").read_text())["results"]]
    if task == "continue":
        cli(["generate", str(folder), "--interleaved", CAPTION, "--n", "1", "--max-new-tokens", "4",
             "--max-images", "2", *common, "--out", str(out)])
        record = json.loads((out / "000.json").read_text())
        return [(record["text"], [png(out / name) for name in record["images"]])]
    cli(["edit", str(folder), str(path), "make it blue", "--n", str(N), *common, "--out", str(out)])
    return [png(out / f"{i:03d}.png") for i in range(N)]


def pipeline_output(task, folder, loaded, path, tmp_path):
    from transfusion.pipeline import Pipeline

    pipe = Pipeline(loaded)
    if task == "t2i":
        return [np.asarray(x) for x in pipe(CAPTION, num_inference_steps=STEPS, num_images_per_prompt=N,
                                            seed=SEED).images]
    if task == "caption":
        return [pipe.caption(PILImage.open(path), max_new_tokens=4, seed=SEED)]
    if task == "continue":
        parts = pipe.generate(CAPTION, max_new_tokens=4, max_images=2, num_inference_steps=STEPS, seed=SEED)
        return [("".join(p for p in parts if isinstance(p, str)),
                 [np.asarray(p) for p in parts if not isinstance(p, str)])]
    return [np.asarray(x) for x in pipe.edit(PILImage.open(path), "make it blue", num_inference_steps=STEPS,
                                             num_images=N, seed=SEED).images]


def demo_output(task, folder, loaded, path, tmp_path):
    from transfusion.data.ondisk import load_image
    from transfusion.demo.app import run_job
    from transfusion.demo.jobs import Job, Limits

    image = load_image(path, loaded.config.image.size)
    kind = {"t2i": "t2i", "caption": "i2t", "continue": "interleaved", "edit": "edit"}[task]
    job = Job(kind, prompt="make it blue" if task == "edit" else "" if task == "caption" else CAPTION,
              image=image if task in ("caption", "edit") else None, n=1 if task in ("caption", "continue") else N,
              steps=STEPS, seed=SEED)
    samples = run_job(loaded, job, Limits(max_new_tokens=4, max_images=2))["samples"]
    if task == "caption":
        return [s["text"] for s in samples]
    if task == "continue":
        return [(s["text"], [from_data_url(u) for u in s["images"]]) for s in samples]
    return [from_data_url(s["images"][0]) for s in samples]


FRONT_ENDS = {"cli": cli_output, "pipeline": pipeline_output, "demo": demo_output}


@pytest.mark.parametrize("task", ["t2i", "caption", "continue", "edit"])
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_every_front_end_gives_the_task_s_output(run, picture, task, front_end, tmp_path):
    folder, loaded = run
    got = FRONT_ENDS[front_end](task, folder, loaded, picture[0], tmp_path)
    if front_end == "cli":  # it loads the run itself, at the default --precision
        loaded = with_precision(loaded, "auto")
    want = task_output(task, loaded, picture[1])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if task == "continue":
            assert g[0] == w[0] and len(g[1]) == len(w[1])
            assert all(np.array_equal(a, b) for a, b in zip(g[1], w[1]))
        elif task == "caption":
            assert g == w
        else:
            assert np.array_equal(g, w)


@pytest.mark.parametrize("task", ["t2i", "caption", "continue", "edit"])
def test_evaluation_gives_the_task_s_output(run, task):
    """The evaluation suites run the tasks with the run's own sampler, in chunks, seed + i per document."""
    from transfusion import evaluate

    _, loaded = run
    engine, req = engine_of(loaded), Request(steps=STEPS, seed=SEED)
    if task == "t2i":
        docs = evaluate.held_out_pairs(loaded, 3)
        got = evaluate.prompt_following(loaded, docs, req)["images"]
        want = tasks.text_to_image(engine, [d.caption for d in docs], req).images
    elif task == "caption":
        docs = evaluate.held_out_pairs(loaded, 3)
        assert evaluate.captioning(loaded, docs, 6)["generated"] == tasks.caption(
            engine, [[d.images[0]] for d in docs], Request(max_new_tokens=6)).texts
        return
    elif task == "continue":
        docs = evaluate.held_out_interleaved(loaded, 2)
        got = [x for _, images in evaluate.interleaved(loaded, docs, req, max_new_tokens=4)["rows"] for x in images]
        most = max(len(d.meta["scenes"]) for d in docs)
        done = tasks.continue_documents(engine, [[d.segments[0]] for d in docs],
                                        Request(steps=STEPS, seed=SEED, max_new_tokens=4, max_images=most + 1))
        want = [x for s in done.samples for x in s.images]
    else:
        docs = evaluate.held_out_edits(loaded, 2)
        got = evaluate.editing(loaded, docs, req)["outputs"]
        want = tasks.edit(engine, [d.segments[0].pixels for d in docs], [d.segments[1].text for d in docs],
                          req).images
    assert len(got) == len(want) and all(np.array_equal(to_uint8(a), to_uint8(b)) for a, b in zip(got, want))
