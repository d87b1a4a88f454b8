"""Images larger than RAM train: the files are opened and preprocessed a chunk at a time into a
memory-mapped safetensors store under headkit's cache (keyed by the files' paths, sizes and
mtimes, the processor and the crop), batches read their rows from it, and subsets and joins index
into it. Its pixels are bit for bit the ones the processor makes in memory."""

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from headkit._fs import cache_dir
from headkit.data.batching import EncodedData, concat
from headkit.data.images import open_image, preprocess
from headkit.data.readers import read_rows
from headkit.data.tasks import TaskSpec, prepare
from headkit.training.features import tokens_digest
from headkit.training.recipe import TrainConfig, train

from conftest import mapped_file, needs_proc_maps, write_csv

# ResNet/ConvNeXt-style: a centre crop unless a box head reads the images (then each is squeezed whole)
PROCESSOR = transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
SIZES = [(40, 32), (32, 48), (32, 32)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """12 noise images of mixed sizes (one grayscale), each with a label and a box; their CSV."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        width, height = SIZES[i % 3]
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        (image.convert("L") if i == 5 else image).save(root / f"img-{i}.png")
        rows.append({"image": f"img-{i}.png", "label": "ab"[i % 2], "x1": 1, "y1": 2, "x2": 20, "y2": 30})
    return write_csv(root / "data.csv", rows)


def tasks(data: Path, box: bool = True) -> list[TaskSpec]:
    label = [TaskSpec("label", str(data), text="image", pooling="mean")]
    return label + [TaskSpec("box", str(data), text="image", label="x1,y1,x2,y2", type="box")] * box


def in_ram(data: Path, crop: bool) -> torch.Tensor:
    """The in-memory path: every image opened, then one (N, C, H, W) tensor from `preprocess`."""
    pictures = [open_image(data.parent / row["image"], "test")[0] for row in read_rows(data)]
    return preprocess(PROCESSOR, pictures, crop=crop)


def store_files() -> set[str]:
    return {str(p.resolve()) for p in (cache_dir() / "pixels").glob("*.safetensors")}


@needs_proc_maps
@pytest.mark.parametrize("box", [False, True], ids=["cropped", "squeezed"])
def test_pixels_live_in_a_mapped_store_bit_for_bit_the_in_memory_ones(images, box):
    data = prepare(tasks(images, box), PROCESSOR, val_fraction=0)
    pixels = data.train.pixels
    assert len(pixels) == 12 and mapped_file(pixels[0]) in store_files()
    expected = in_ram(images, crop=not box)
    for i in range(12):
        assert pixels[i].dtype == torch.float32 and torch.equal(pixels[i], expected[i]), i


def test_subsets_and_joins_index_into_the_store_without_copying_pixels(images):
    data = prepare(tasks(images), PROCESSOR, val_fraction=0).train
    part = data.subset([7, 2])
    joined = concat([part, data.subset([2]), data], {"label": "classification", "box": "box"})
    assert part.pixels[0].data_ptr() == data.pixels[7].data_ptr()
    assert joined.pixels[2].data_ptr() == data.pixels[2].data_ptr()
    assert len(joined.pixels) == 15 and joined.pixels[3 + 11].data_ptr() == data.pixels[11].data_ptr()
    assert tokens_digest(part) != tokens_digest(data.subset([2, 7]))  # the order of rows is part of the identity


def test_a_later_run_reuses_the_store_and_a_changed_file_makes_a_new_one(images, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADKIT_CACHE", str(tmp_path / "cache"))
    calls = []
    original = type(PROCESSOR).__call__
    monkeypatch.setattr(type(PROCESSOR), "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    first = prepare(tasks(images), PROCESSOR, val_fraction=0).train
    assert calls and len(store_files()) == 1
    done = len(calls)
    second = prepare(tasks(images), PROCESSOR, val_fraction=0).train
    assert len(calls) == done and tokens_digest(first) == tokens_digest(second)  # nothing preprocessed again
    prepare(tasks(images, box=False), PROCESSOR, val_fraction=0)  # cropped, not squeezed: another store
    assert len(store_files()) == 2
    copy = images.parent / "copy"
    copy.mkdir(exist_ok=True)
    for i in range(12):
        (copy / f"img-{i}.png").write_bytes((images.parent / f"img-{i}.png").read_bytes())
    data = write_csv(copy / "data.csv", read_rows(images))
    before = prepare(tasks(data), PROCESSOR, val_fraction=0).train
    Image.new("RGB", (32, 32), (255, 0, 0)).save(copy / "img-4.png")  # another image under the same name
    after = prepare(tasks(data), PROCESSOR, val_fraction=0).train
    assert tokens_digest(after) != tokens_digest(before) and len(store_files()) == 4
    assert not torch.equal(after.pixels[4], before.pixels[4]) and torch.equal(after.pixels[3], before.pixels[3])


def test_a_tensor_of_pixels_in_memory_still_makes_encoded_data():
    pixels = torch.randn(3, 3, 8, 8)
    data = EncodedData([[], [], []], pixels=pixels)
    assert torch.equal(data[1]["pixel_values"], pixels[1]) and torch.equal(data.subset([2]).pixels[0], pixels[2])
    assert tokens_digest(data) == tokens_digest(EncodedData([[], [], []], pixels=pixels.clone()))


@needs_proc_maps
@pytest.mark.parametrize("strategy", ["full", "frozen"])
def test_training_reads_batches_from_the_store_and_equals_training_on_pixels_in_ram(
    images, tmp_path, monkeypatch, strategy
):
    import headkit.data.tasks as tasks_module

    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(tmp_path / "resnet")
    PROCESSOR.save_pretrained(tmp_path / "resnet")

    def run(out: str):
        settings = {"strategy": strategy, "epochs": 2, "batch_size": 4, "val_fraction": 0.25, "progress": False}
        model = str(tmp_path / "resnet")
        return train(TrainConfig(model=model, tasks=tasks(images), output_dir=str(tmp_path / out), **settings))

    read_from = set()
    original = EncodedData.__getitem__

    def recorded(self, i):
        example = original(self, i)
        read_from.add(mapped_file(example["pixel_values"]))
        return example

    monkeypatch.setattr(EncodedData, "__getitem__", recorded)
    stored = run("stored")
    assert read_from and read_from <= store_files()  # every example came from the disk store
    monkeypatch.setattr(EncodedData, "__getitem__", original)
    monkeypatch.setattr(tasks_module, "pixel_store", lambda processor, files, crop: in_ram(images, crop))
    in_memory = run("in_memory")
    expected = in_memory.model.state_dict()
    for key, tensor in stored.model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    assert stored.metrics["heads"] == in_memory.metrics["heads"]
