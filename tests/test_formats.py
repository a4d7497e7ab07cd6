"""The corpus formats people have (WebDataset / img2dataset shards, Parquet), and experiment logs
(TensorBoard read back, W&B offline)."""

import io
import json
import tarfile

import pytest
from PIL import Image as PILImage

from transfusion.data.ondisk import BadRecordError
from transfusion.data.registry import load_dataset
from transfusion.data.shards import ShardedCorpus, decode_record, read_records, split_key


def jpeg(colour, size=(40, 24)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_keys_split_at_the_first_dot_of_the_base_name():
    assert split_key("000042.jpg") == ("000042", "jpg")
    assert split_key("000042.0.png") == ("000042", "0.png")
    assert split_key("./part.v2/000042.seg.json") == ("./part.v2/000042", "seg.json")


def test_img2dataset_shards_read_as_the_webdataset_library_reads_them(tmp_path):
    wds = pytest.importorskip("webdataset")
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:  # img2dataset's layout, in a folder with dots and a ./ prefix
        for i, colour in enumerate(["red", "blue", "green"]):
            key = f"./laion.part-1/{i:09d}"
            add(tar, f"{key}.jpg", jpeg(colour))
            add(tar, f"{key}.txt", f"a {colour} square".encode())
            add(tar, f"{key}.json", json.dumps({"url": f"http://x/{i}", "caption": "ignored"}).encode())
        add(tar, "./laion.part-1/000000003.jpg", b"not a jpeg")  # corrupt
        add(tar, "./laion.part-1/000000003.txt", b"broken")
    ours = [(key, sorted(members)) for _, key, members in read_records(shard)]
    theirs = [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in wds.WebDataset(str(shard),
                                                                                                       shardshuffle=False)]
    assert ours == theirs and len(ours) == 4
    docs = []
    for key, members in [(k, m) for _, k, m in read_records(shard)][:3]:
        docs.append(decode_record(key, members, 16, latents=False))
    assert [d.caption for d in docs] == ["a red square", "a blue square", "a green square"]
    assert all(d.kind == "pair" and d.images[0].pixels.shape == (3, 16, 16) for d in docs)
    _, key, members = list(read_records(shard))[3]
    with pytest.raises(BadRecordError, match="cannot decode its image"):
        decode_record(key, members, 16, latents=False)
    corpus = ShardedCorpus(str(tmp_path), 16, streams=1)
    assert [d.caption for d in corpus.head(3)] == ["a red square", "a blue square", "a green square"]


def parquet_file(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    images = pa.array([{"bytes": b, "path": None} for b, _ in rows],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "text": [t for _, t in rows]}), path, row_group_size=2)


def test_parquet_files_in_the_hugging_face_datasets_layout(tmp_path):
    (tmp_path / "train").mkdir()
    parquet_file(tmp_path / "train" / "part-0.parquet", [(jpeg("red"), "a red one"), (jpeg("blue"), "a blue one"),
                                                         (b"broken", "a broken one")])
    parquet_file(tmp_path / "train" / "part-1.parquet", [(jpeg("green", (24, 40)), "a green one")])
    data = load_dataset(str(tmp_path / "{split}"), "train", 16)
    assert len(data) == 4 and data[0].caption == "a red one" and data[3].caption == "a green one"
    assert data[3].images[0].pixels.shape == (3, 16, 16) and data[1].kind == "pair"
    with pytest.raises(BadRecordError, match="part-0.parquet row 2: cannot decode"):
        data[2]
    lenient = load_dataset(str(tmp_path / "{split}"), "train", 16, on_error="skip")
    with pytest.warns(UserWarning, match="skipping bad record"):
        assert lenient[2].caption == "a green one"
    assert lenient.skipped == 1


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    from transfusion.cli import COMMANDS

    out = tmp_path_factory.mktemp("logged") / "run"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=4", "train.log_every=2",
                       "train.sample_every=2", "train.eval_samples=2", "sampling.steps=2",
                       "train.log=tensorboard"])
    return out


def test_tensorboard_holds_the_logged_scalars_and_sample_grids(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/lm", "train/ddpm", "train/lr", "train/tokens_per_s", "train/mfu"} <= set(tags["scalars"])
    rows = [json.loads(line) for line in (logged_run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("train/lm")] == [r["step"] for r in rows] == [2, 4]
    assert [e.value for e in events.Scalars("train/lm")] == pytest.approx([r["lm"] for r in rows])
    assert {"samples/text_to_image", "samples/captions"} <= set(tags["images"])
    grid = events.Images("samples/text_to_image")[-1]
    assert grid.step == 4 and PILImage.open(io.BytesIO(grid.encoded_image_string)).size[0] > 16


def test_wandb_logs_offline_without_a_login(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from transfusion.cli import COMMANDS

    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=2", "train.log_every=1",
                       "train.eval_samples=2", "sampling.steps=2", "train.log=wandb"])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (out / "metrics.jsonl").read_text().count("\n") == 2
