"""What checkpoints and the best epoch's save carry: persistent buffers (BatchNorm statistics) beside
the parameters, only the tensors that can change (not LoRA's frozen base weights), streamed to disk;
and which device the training loop asks accelerate for."""

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
import transformers

from headkit import CheckpointError, head_config
from headkit._fs import atomic_path
from headkit.data.shapes import SHAPES, write_shapes
from headkit.data.tasks import TaskSpec
from headkit.model import MultiHeadModel
from headkit.training import loop
from headkit.training.checkpoint import load_train_state, restore_best, save_train_state
from headkit.training.recipe import TrainConfig, train

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return write_shapes(tmp_path_factory.mktemp("shapes"), train=24, validation=8, test=8, size=32)


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory) -> Path:
    """A ResNet: BatchNorm layers, whose running statistics are buffers, not parameters."""
    directory = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    transformers.ResNetModel(config).save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def resnet_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model),
        tasks=[TaskSpec("shape", str(data), text="image", pooling="mean")],
        strategy="full",
        epochs=3,
        batch_size=8,
        lr=1e-2,
        backbone_lr=1e-2,  # large enough that the statistics move visibly between epochs
        val_fraction=0.25,
        patience=0,
        progress=False,
        output_dir=str(out),
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent buffers (state_dict entries that are not parameters), copied."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n not in params}


def rig_best_epoch(monkeypatch, scores: list[float]) -> list[dict[str, torch.Tensor]]:
    """Make the loop's validation report `scores[i]` as epoch i+1's objective (so the best epoch is
    chosen by the test); returns the model's state_dict as it was at each epoch's end, filled in as
    the run goes."""
    snapshots: list[dict[str, torch.Tensor]] = []
    original = loop.evaluate

    def rigged(model, *args, **kwargs):
        ev = original(model, *args, **kwargs)
        snapshots.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        score = scores[len(snapshots) - 1]
        ev.objective = lambda *_: score
        return ev

    monkeypatch.setattr(loop, "evaluate", rigged)
    return snapshots


def test_the_best_epoch_keeps_its_own_batchnorm_statistics(tiny_resnet, shapes, tmp_path, monkeypatch):
    snapshots = rig_best_epoch(monkeypatch, [0.5, 0.9, 0.1])  # epoch 2 of 3 is the best
    result = train(resnet_config(tiny_resnet, shapes["train"], tmp_path / "run"))
    assert result.metrics["best_epoch"] == 2 and len(snapshots) == 3
    stats = buffers(result.model)
    assert any("running_mean" in n for n in stats) and any("num_batches_tracked" in n for n in stats)
    assert any(not torch.equal(snapshots[1][n], snapshots[2][n]) for n in stats)  # the epochs differ
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name


def test_an_interrupted_resnet_resumes_to_identical_parameters_and_statistics(
    tiny_resnet, shapes, tmp_path, monkeypatch
):
    uninterrupted = train(resnet_config(tiny_resnet, shapes["train"], tmp_path / "a", save_every=2))
    calls = {"n": 0}
    original = MultiHeadModel.forward_heads

    def crash_after_five(self, *args, **kwargs):
        calls["n"] += self.training  # training steps only, not evaluation passes
        if calls["n"] == 5 and self.training:  # mid-epoch 2 (3 steps an epoch), after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadModel, "forward_heads", crash_after_five)
    cfg = resnet_config(tiny_resnet, shapes["train"], tmp_path / "b", save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["progress"]["global_step"] == 4
    monkeypatch.setattr(MultiHeadModel, "forward_heads", original)
    cfg.resume = True
    resumed = train(cfg)
    expected = uninterrupted.model.state_dict()
    assert any("running_var" in n for n in buffers(resumed.model))
    for name, tensor in resumed.model.state_dict().items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    assert resumed.metrics["heads"] == uninterrupted.metrics["heads"]


def test_best_weights_under_lora_leave_out_the_frozen_base_weights(tiny_text_model, tmp_path, monkeypatch):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    cfg = TrainConfig(
        model=str(tiny_text_model),
        tasks=[TaskSpec("sentiment", data)],
        strategy="lora",
        lora_targets=["query", "value"],
        epochs=2,
        batch_size=8,
        val_fraction=0.25,
        patience=0,
        progress=False,
        output_dir=str(tmp_path / "run"),
    )
    snapshots = rig_best_epoch(monkeypatch, [0.9, 0.1])  # epoch 1 of 2 is the best
    result = train(cfg)
    best = tmp_path / "run" / "best.safetensors"
    with safetensors.safe_open(best, framework="pt") as f:
        names = set(f.keys())
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable <= names and any("lora_" in n for n in names)
    assert not [
        n for n in names if n.startswith("adapter.backbone.") and "lora_" not in n and n not in buffers(result.model)
    ]
    model_bytes = sum(t.numel() * t.element_size() for t in result.model.state_dict().values())
    assert best.stat().st_size < model_bytes / 4, (best.stat().st_size, model_bytes)
    assert not list((tmp_path / "run").glob(".best.safetensors.*"))  # no temporary file left behind
    # still exactly the best epoch's model: the frozen base weights never changed
    assert result.metrics["best_epoch"] == 1
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, snapshots[0][name]), name


def small_training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """A linear layer and a BatchNorm after one AdamW step (running statistics moved)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_a_checkpoint_restores_buffers_in_their_dtype_and_one_without_them_still_loads(tmp_path):
    model, optimizer, scheduler = small_training_state()
    saved = {n: t.detach().clone() for n, t in model.state_dict().items()}
    save_train_state(tmp_path / "ckpt", model, optimizer, scheduler, {"phase": 0})
    fresh, fresh_opt, fresh_sched = small_training_state()
    with torch.no_grad():
        for t in fresh.state_dict().values():
            t.zero_()
    assert load_train_state(tmp_path / "ckpt", fresh, fresh_opt, fresh_sched) == {"phase": 0}
    for name, tensor in fresh.state_dict().items():
        assert tensor.dtype == saved[name].dtype and torch.equal(tensor, saved[name]), name
    assert fresh[1].num_batches_tracked.dtype == torch.int64 and fresh[1].num_batches_tracked.item() == 1

    # a checkpoint written before buffers were saved: parameters load, buffers stay as they are
    path = tmp_path / "ckpt" / "state.safetensors"
    tensors = {k: v for k, v in safetensors.torch.load_file(path).items() if not k.startswith("buffer.")}
    safetensors.torch.save_file(tensors, path)
    old, old_opt, old_sched = small_training_state()
    with torch.no_grad():
        old[1].running_mean.fill_(7.0)
        old[0].weight.zero_()
    load_train_state(tmp_path / "ckpt", old, old_opt, old_sched)
    assert torch.equal(old[0].weight, saved["0.weight"]) and bool((old[1].running_mean == 7.0).all())


def test_a_best_file_of_an_earlier_version_still_restores(tiny_resnet, shapes, tmp_path):
    """Earlier files held every backbone parameter once it had trained, and no buffers; they named
    the backbone's tensors backbone.* (now adapter.backbone.*)."""
    heads = {"shape": head_config("classification", labels=list(SHAPES), pooling="mean")}
    model = MultiHeadModel.from_pretrained(tiny_resnet, heads)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = buffers(model)
    earlier_names = {n.removeprefix("adapter."): p for n, p in params.items()}
    assert any(n.startswith("backbone.") for n in earlier_names)
    safetensors.torch.save_file(earlier_names, tmp_path / "best.safetensors")
    (tmp_path / "best.json").write_text(json.dumps({"backbone_modified": True, "epoch": 1}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    cfg = resnet_config(tiny_resnet, shapes["train"], tmp_path / "run")
    assert restore_best(tmp_path, model, cfg, backbone_modified=True)["epoch"] == 1
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    for name, b in buffers(model).items():
        assert torch.equal(b, before[name]), name
    safetensors.torch.save_file({"backbone.nowhere": torch.zeros(1)}, tmp_path / "best.safetensors")
    with pytest.raises(CheckpointError, match=r"holds tensors this model lacks: \['backbone.nowhere'\]"):
        restore_best(tmp_path, model, cfg, backbone_modified=True)


def test_a_streamed_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "best.safetensors"
    with atomic_path(target) as tmp:
        safetensors.torch.save_file({"x": torch.zeros(2)}, tmp)
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        safetensors.torch.save_file({"x": torch.ones(2)}, tmp)
        raise RuntimeError("killed mid-save")
    assert torch.equal(safetensors.torch.load_file(target)["x"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize(
    ("cuda", "mps", "cpu"),
    [(True, False, False), (False, True, False), (True, True, False), (False, False, True)],
)
def test_accelerate_is_forced_onto_the_cpu_only_without_cuda_or_mps(monkeypatch, cuda, mps, cpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(loop, "_mps_available", lambda: mps)
    assert loop.force_cpu() is cpu
