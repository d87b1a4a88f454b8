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


def rig_head_scores(monkeypatch, scores: dict[str, list[float]]) -> list[dict[str, torch.Tensor]]:
    """Make the loop's validation report `scores[head][i]` as each head's accuracy at epoch i+1;
    returns the model's state_dict at each epoch's end. Rigs anew when called again."""
    from headkit.training.evaluate import evaluate as original

    snapshots: list[dict[str, torch.Tensor]] = []

    def rigged(model, *args, **kwargs):
        ev = original(model, *args, **kwargs)
        snapshots.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        for head, values in scores.items():
            if values[len(snapshots) - 1] is None:  # the split scored no example of this head
                del ev.scores[head]
            else:
                ev.scores[head]["accuracy"] = values[len(snapshots) - 1]
        return ev

    monkeypatch.setattr(loop, "evaluate", rigged)
    return snapshots


def two_head_config(model: Path, data: str, out: Path, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model),
        tasks=[TaskSpec("a", data), TaskSpec("b", data)],
        strategy="frozen",
        epochs=4,
        batch_size=8,
        val_fraction=0.25,
        patience=0,
        progress=False,
        temperature_scaling="off",  # the saved heads are then exactly the epochs' weights
        output_dir=str(out),
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def head_state(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {n: t for n, t in state.items() if n.startswith(f"heads.{head}.")}


def test_heads_on_a_frozen_backbone_each_keep_their_own_best_epoch(tiny_text_model, tmp_path, monkeypatch):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    snapshots = rig_head_scores(monkeypatch, {"a": [0.5, 0.9, 0.6, 0.6], "b": [0.5, 0.6, 0.7, 0.9]})
    result = train(two_head_config(tiny_text_model, data, tmp_path / "run"))
    assert result.metrics["head_best_epochs"] == {"a": 2, "b": 4}
    final = result.model.state_dict()
    for head, epoch in [("a", 2), ("b", 4)]:
        kept = head_state(final, head)
        assert kept and all(torch.equal(t, snapshots[epoch - 1][n]) for n, t in kept.items()), head
    assert any(not torch.equal(t, snapshots[3][n]) for n, t in head_state(final, "a").items())  # not the last epoch's
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "best epochs: a 2, b 4" in card


def test_one_best_epoch_for_all_heads_where_a_metric_is_named_or_the_backbone_trains(
    tiny_text_model, tmp_path, monkeypatch
):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    scores = {"a": [0.5, 0.9, 0.6, 0.6], "b": [0.5, 0.6, 0.7, 0.95]}  # mean best at epoch 4 (0.775)
    for name, overrides in [("metric", {"metric_for_best_model": "accuracy"}), ("full", {"strategy": "full"})]:
        snapshots = rig_head_scores(monkeypatch, scores)
        result = train(two_head_config(tiny_text_model, data, tmp_path / name, **overrides))
        assert "head_best_epochs" not in result.metrics and result.metrics["best_epoch"] == 4, name
        assert all(torch.equal(t, snapshots[3][n]) for n, t in head_state(result.model.state_dict(), "a").items())
        assert not (tmp_path / name / "best_heads.json").exists()


def test_an_epoch_that_improves_any_head_is_not_a_bad_epoch(tiny_text_model, tmp_path, monkeypatch):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    # the mean falls after epoch 2 (0.75, 0.7, 0.6) while head b still improves at epoch 3
    rig_head_scores(monkeypatch, {"a": [0.5, 0.9, 0.6, 0.3, 0.3], "b": [0.5, 0.6, 0.8, 0.7, 0.7]})
    result = train(two_head_config(tiny_text_model, data, tmp_path / "run", epochs=5, patience=1))
    assert len(result.metrics["epochs"]) == 4  # epoch 4 improved nothing: stopped there, not after epoch 3
    assert result.metrics["head_best_epochs"] == {"a": 2, "b": 3}


def test_an_interrupted_run_resumes_to_the_same_heads_at_their_best_epochs(tiny_text_model, tmp_path, monkeypatch):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    scores = {"a": [0.5, 0.9, 0.6, 0.6], "b": [0.5, 0.6, 0.7, 0.9]}
    rig_head_scores(monkeypatch, scores)
    uninterrupted = train(two_head_config(tiny_text_model, data, tmp_path / "a"))
    snapshots = rig_head_scores(monkeypatch, scores)
    original = loop.end_epoch

    def crash_in_epoch_three(run, current, state, seconds):
        if len(state.epochs) == 2:  # after epoch 2's best files, before epoch 3 is recorded
            raise KeyboardInterrupt
        return original(run, current, state, seconds)

    monkeypatch.setattr(loop, "end_epoch", crash_in_epoch_three)
    cfg = two_head_config(tiny_text_model, data, tmp_path / "b", save_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert json.loads((tmp_path / "b" / "best_heads.json").read_text())["a"]["epoch"] == 2
    monkeypatch.setattr(loop, "end_epoch", original)
    assert len(snapshots) == 2
    rig_head_scores(monkeypatch, {h: v[2:] for h, v in scores.items()})  # resumed at epoch 3
    cfg.resume = True
    resumed = train(cfg)
    assert resumed.metrics["head_best_epochs"] == {"a": 2, "b": 4}
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_head_no_validation_example_scores_stays_at_the_models_best_epoch(tiny_text_model, tmp_path, monkeypatch):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    config = two_head_config(tiny_text_model, data, tmp_path / "run")
    config.tasks.append(TaskSpec("c", data))
    rig_head_scores(monkeypatch, {"a": [0.5, 0.9, 0.6, 0.6], "b": [0.5, 0.6, 0.7, 0.95], "c": [None] * 4})
    result = train(config)
    assert result.metrics["head_best_epochs"] == {"a": 2, "b": 4, "c": 4}  # c: the mean's best epoch
    assert "best epochs: a 2, b 4, c 4" in (tmp_path / "run" / "model" / "README.md").read_text()


def test_a_run_resumed_from_before_heads_kept_their_own_epochs_keeps_one(tiny_text_model, tmp_path, monkeypatch):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    scores = {"a": [0.5, 0.9, 0.6, 0.6], "b": [0.5, 0.6, 0.7, 0.95]}
    rig_head_scores(monkeypatch, scores)
    original = loop.end_epoch

    def crash_in_epoch_three(run, current, state, seconds):
        if len(state.epochs) == 2:
            raise KeyboardInterrupt
        return original(run, current, state, seconds)

    monkeypatch.setattr(loop, "end_epoch", crash_in_epoch_three)
    cfg = two_head_config(tiny_text_model, data, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    for name in ("best_heads.json", "best_heads.safetensors"):  # as an earlier version left the directory
        (tmp_path / "run" / name).unlink()
    monkeypatch.setattr(loop, "end_epoch", original)
    rig_head_scores(monkeypatch, {h: v[2:] for h, v in scores.items()})
    cfg.resume = True
    resumed = train(cfg)
    assert "head_best_epochs" not in resumed.metrics and resumed.metrics["best_epoch"] == 4
