"""Few-shot training: pair construction per head type, the contrastive loss, heads solved by sklearn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

from headkit import MultiHeadModel
from headkit.data.batching import EncodedData
from headkit.errors import DataError, HeadConfigError, HeadkitError
from headkit.heads.base import IGNORE_INDEX
from headkit.heads.fewshot import logistic
from headkit.training.fewshot import CONTRASTIVE_FILE, fewshot_heads, make_pairs, solve_heads
from headkit.training.recipe import TrainConfig, train

from conftest import VOCAB, sentiment_rows, write_csv


def test_class_pairs_are_one_positive_and_one_negative_per_example_per_iteration():
    y = np.array([0, 0, 1, 1, 2, 2, IGNORE_INDEX])
    data = EncodedData([[1]] * 7, {"c": y})
    pairs = make_pairs(data, {"c": "classification"}, iterations=3, seed=0)
    assert len(pairs) == 2 * 3 * 6  # the unlabelled row makes no pairs
    for p in pairs:
        assert p.left != p.right and IGNORE_INDEX not in (y[p.left], y[p.right])
        assert p.target == float(y[p.left] == y[p.right])
    assert sum(p.target for p in pairs) == len(pairs) / 2


def test_an_anchors_two_pairs_stay_side_by_side_so_they_share_a_batch():
    """The shuffle moves anchors, not pairs: every batch embeds fewer distinct texts."""
    y = np.arange(40) % 4
    data = EncodedData([[1]] * 40, {"c": y})
    pairs = make_pairs(data, {"c": "classification"}, iterations=2, seed=1)
    for first, second in zip(pairs[::2], pairs[1::2], strict=True):
        assert (first.left, first.left_pos) == (second.left, second.left_pos)
        assert {first.target, second.target} == {0.0, 1.0}
    assert [p.left for p in pairs[::2]] != sorted(p.left for p in pairs[::2])  # anchors are still shuffled
    texts_per_batch = [len({i for p in pairs[k : k + 16] for i in (p.left, p.right)}) for k in range(0, 160, 16)]
    assert max(texts_per_batch) <= 24


def test_regression_and_multilabel_targets_mirror_label_similarity():
    scores = np.array([[0.0], [10.0], [5.0], [np.nan]])
    pairs = make_pairs(EncodedData([[1]] * 4, {"r": scores}), {"r": "regression"}, iterations=2, seed=0)
    assert len(pairs) == 2 * 2 * 3
    for p in pairs:
        assert p.target == pytest.approx(1 - abs(scores[p.left, 0] - scores[p.right, 0]) / 10)
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    pairs = make_pairs(EncodedData([[1]] * 3, {"m": labels}), {"m": "multilabel"}, iterations=1, seed=0)
    jaccard = {(0, 1): 0.5, (1, 0): 0.5, (0, 2): 0.0, (2, 0): 0.0, (1, 2): 0.0, (2, 1): 0.0}
    assert all(p.target == jaccard[(p.left, p.right)] for p in pairs)


def test_token_pairs_join_tokens_of_the_same_tag_and_skip_unlabelled_positions():
    tags = [[IGNORE_INDEX, 0, 1, 0, IGNORE_INDEX], [IGNORE_INDEX, 1, 1, 2, IGNORE_INDEX]]
    pairs = make_pairs(EncodedData([[1] * 5] * 2, {"t": tags}), {"t": "token-classification"}, 4, seed=0)
    assert len(pairs) == 2 * 4 * 2
    for p in pairs:
        left, right = tags[p.left][p.left_pos], tags[p.right][p.right_pos]
        assert IGNORE_INDEX not in (left, right) and (p.left, p.left_pos) != (p.right, p.right_pos)
        assert p.target == float(left == right)
    # tag 2 has a single token: it is never an anchor, but can be a negative
    assert all(tags[p.left][p.left_pos] != 2 for p in pairs)


def test_a_class_with_one_example_or_a_single_class_is_refused():
    with pytest.raises(DataError, match="at least 2 training examples of every class"):
        make_pairs(EncodedData([[1]] * 3, {"c": np.array([0, 0, 1])}), {"c": "classification"}, 1, 0)
    with pytest.raises(DataError, match="single class"):
        make_pairs(EncodedData([[1]] * 3, {"c": np.array([1, 1, 1])}), {"c": "classification"}, 1, 0)


def test_binary_logistic_regression_becomes_an_equivalent_two_row_linear_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(int)
    weight, bias = logistic(x, y, 2)
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=1.0, max_iter=2000).fit(x, y).predict_proba(x)
    logits = torch.tensor(x @ weight.T + bias)
    np.testing.assert_allclose(logits.softmax(-1).numpy(), reference, atol=1e-6)


def test_solved_heads_read_normalised_features_and_fit_the_training_data(tiny_text_model):
    from headkit import load_processor
    from headkit.data.tasks import TaskSpec, prepare

    rows = sentiment_rows(24)
    tokenizer = load_processor(tiny_text_model)
    data = prepare([TaskSpec("s", "rows")], tokenizer, 32, 0.0, sources={"rows": rows_dataset(rows)})
    with pytest.raises(HeadConfigError, match=r"heads \['s'\] do not read unit vectors"):
        solve_heads(MultiHeadModel.from_pretrained(tiny_text_model, data.heads), data.train, pad_id=0, progress=False)
    model = MultiHeadModel.from_pretrained(tiny_text_model, fewshot_heads(data.heads)).eval()
    solve_heads(model, data.train, pad_id=0, progress=False)
    assert model.heads["s"].config.normalize and not data.heads["s"].normalize  # a new config, built so
    features = model.forward_features({"input_ids": torch.tensor([data.train.input_ids[0]])})
    pooled = model.adapter.pooled(features, "mean")
    by_hand = model.heads["s"].classifier[-1](torch.nn.functional.normalize(pooled, dim=-1))
    assert torch.allclose(model.heads["s"].forward_pooled(pooled), by_hand)


def rows_dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _accuracy(model, tiny_text_model) -> float:
    from headkit.ship.predict import predict_texts

    rows = sentiment_rows(40, seed=1)
    predictions = predict_texts(model, _tokenizer(tiny_text_model), [r["text"] for r in rows])
    return float(np.mean([p["sentiment"]["label"] == r["label"] for p, r in zip(predictions, rows, strict=True)]))


# (recipe, its count option and value, pairs it makes from 16 examples at batch_size 8); the tiny
# backbone is random, so all-pairs tunes all of it here (its default, the top two thirds, is for pretrained ones)
RECIPES = [
    ("setfit", "fewshot_iterations", 10, 2 * 10 * 16),
    ("all-pairs", "fewshot_steps", 20, 20 * (8 * 7 // 2)),
]


@pytest.mark.parametrize(("recipe", "count", "value", "pairs"), RECIPES)
def test_fewshot_run_learns_a_toy_task_from_8_per_class_and_resumes_after_the_contrastive_phase(
    tiny_text_model, tmp_path, capsys, notes_shown, recipe, count, value, pairs
):
    data = write_csv(tmp_path / "few.csv", sentiment_rows(16))  # 8 per class
    config = TrainConfig(
        model=str(tiny_text_model),
        data=str(data),
        head=["sentiment:label"],
        pooling="mean",  # the toy task's word sits anywhere in the text: a random backbone's [CLS] barely sees it
        strategy="fewshot",
        fewshot_recipe=recipe,
        batch_size=8,
        backbone_lr=3e-3,
        val_fraction=0.0,
        output_dir=str(tmp_path / "run"),
        progress=False,
        fewshot_tuned_layers=2 if recipe == "all-pairs" else None,
        **{count: value},
    )
    result = train(config)
    assert (tmp_path / "run" / CONTRASTIVE_FILE).is_file()
    assert result.metrics["fewshot"]["pairs"] == pairs
    assert (tmp_path / "run" / "model" / "heads.json").is_file()
    tuned = _accuracy(result.model, tiny_text_model)
    # the same head solved on the untouched random backbone: the pairs are what teach the task
    untouched = train(dataclasses.replace(config, output_dir=str(tmp_path / "plain"), **{count: 0}))
    assert tuned >= 0.85 and tuned >= _accuracy(untouched.model, tiny_text_model) + 0.1
    capsys.readouterr()
    resumed = train(dataclasses.replace(config, resume=True))
    assert "contrastive phase already done" in capsys.readouterr().err
    for a, b in zip(result.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _tokenizer(path):
    from headkit import load_processor

    return load_processor(path)


def test_fewshot_refuses_heads_it_cannot_train(tiny_text_model, tmp_path):
    from headkit.training.fewshot import check_fewshot_heads

    with pytest.raises(HeadConfigError, match="fewshot trains"):
        check_fewshot_heads({"a": "classification", "b": "box"})


def test_too_few_tags_or_labelled_rows_for_pairs_are_refused():
    one_tag = [[IGNORE_INDEX, 0, 0, IGNORE_INDEX]]
    with pytest.raises(DataError, match=r"at least 2 tags and 2 tagged words.*has 1 tag"):
        make_pairs(EncodedData([[1] * 4], {"t": one_tag}), {"t": "token-classification"}, 1, 0)
    lonely = np.array([[1.0], [np.nan]])
    with pytest.raises(DataError, match="at least 2 labelled training examples"):
        make_pairs(EncodedData([[1]] * 2, {"r": lonely}), {"r": "regression"}, 1, 0)


def test_all_pairs_steps_pair_every_labelled_example_of_a_batch_and_tune_the_top_half(tiny_text_model, tmp_path):
    from headkit.training.fewshot import all_pair_steps

    y = np.array([0, 0, 1, 1, IGNORE_INDEX, 1])
    steps = all_pair_steps(EncodedData([[1]] * 6, {"c": y}), {"c": "classification"}, 3, 4, 20, seed=0)
    assert len(steps) == 3
    for pairs in steps:
        ids = {p.left for p in pairs} | {p.right for p in pairs}
        assert 4 not in ids and len(pairs) == len(ids) * (len(ids) - 1) // 2  # all pairs, unlabelled left out
        assert all(p.target == float(y[p.left] == y[p.right]) for p in pairs)
    data = write_csv(tmp_path / "few.csv", sentiment_rows(16))
    config = TrainConfig(model=str(tiny_text_model), data=str(data), head=["sentiment:label"], strategy="fewshot",
                         batch_size=8, backbone_lr=3e-3, output_dir=str(tmp_path / "run"), progress=False)  # fmt: skip
    before = {k: v.clone() for k, v in train(dataclasses.replace(config, fewshot_steps=0)).model.state_dict().items()}
    tuned = train(dataclasses.replace(config, overwrite=True))
    assert tuned.metrics["fewshot"]["contrastive_steps"] == 10  # auto: 16 examples get the floor, 10 steps
    after = tuned.model.state_dict()
    changed = {k for k in before if k.startswith("adapter.backbone.") and not torch.equal(before[k], after[k])}
    assert changed and all(".layer.1." in k or "pooler" in k for k in changed)  # 2 layers: the bottom one frozen
    # the resume file holds just the tuned tensors, and a resumed run rebuilds the same model from it
    saved = safetensors.torch.load_file(tmp_path / "run" / CONTRASTIVE_FILE)
    assert all(".layer.1." in k or "pooler" in k for k in saved)
    assert {k.removeprefix("adapter.backbone.") for k in changed} <= saved.keys()
    resumed = train(dataclasses.replace(config, resume=True)).model.state_dict()
    assert all(torch.equal(after[k], resumed[k]) for k in after)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("fewshot_steps", -1, "0 or more, or auto"), ("fewshot_tuned_layers", 0, "1 or more")],
)
def test_fewshot_counts_out_of_range_are_refused_by_name(option, value, message):
    with pytest.raises(HeadkitError, match=f"--{option} must be {message}, got {value}"):
        train(TrainConfig(strategy="fewshot", data="unused.csv", head=["a:label"], **{option: value}))


def test_a_contrastive_file_of_another_backbone_is_refused_by_name(tmp_path, bert_backbone):
    from headkit.errors import CheckpointError
    from headkit.training.fewshot import load_contrastive

    model = MultiHeadModel(bert_backbone)
    safetensors.torch.save_file({"decoder.block.0.weight": torch.zeros(2)}, tmp_path / CONTRASTIVE_FILE)
    with pytest.raises(CheckpointError, match="not this run's backbone"):
        load_contrastive(tmp_path, model)


def test_auto_steps_grow_with_the_labelled_examples_between_10_and_40():
    from headkit.training.strategy_defaults import fewshot_auto_steps

    assert [fewshot_auto_steps(n) for n in (2, 40, 41, 128, 160, 161, 5000)] == [10, 10, 11, 32, 40, 40, 40]
    with pytest.raises(HeadkitError, match="--fewshot_steps must be 0 or more, or auto, got many"):
        train(TrainConfig(strategy="fewshot", data="unused.csv", head=["a:label"], fewshot_steps="many"))


@pytest.mark.parametrize(("layers", "first_tuned"), [(2, 1), (3, 1), (6, 2), (12, 4), (24, 8)])
def test_all_pairs_tunes_the_top_two_thirds_by_default(layers, first_tuned):
    """The bottom third (rounded) stays frozen: chosen on a development split (fewshot_dev.py)."""
    from headkit.training.fewshot import tuned_from

    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=16)  # fmt: skip
    backbone = transformers.BertModel(config)
    assert tuned_from(backbone, None) == first_tuned
    assert tuned_from(backbone, 1) == layers - 1  # an explicit count wins


def test_the_frozen_bottom_runs_in_train_mode_like_the_rest_and_only_its_gradients_stop(bert_backbone):
    """Few-shot freezes as partial:K does: a frozen layer keeps its dropout (no eval-mode stand-in
    whose use would change the results), and the model is handed back in eval mode."""
    from headkit import head_config
    from headkit.training.fewshot import all_pair_steps, contrastive_tune
    from headkit.training.strategies import layer_stack

    model = MultiHeadModel(bert_backbone, {"c": head_config("classification", labels=["a", "b"])})
    rng = np.random.default_rng(0)
    data = EncodedData([rng.integers(5, VOCAB, size=4).tolist() for _ in range(6)], {"c": np.arange(6) % 2})
    _, layers = layer_stack(model.backbone)
    frozen = {n: p.clone() for n, p in layers[0].named_parameters()}
    modes: list[bool] = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: modes.append(module.training)) for layer in layers]
    steps = all_pair_steps(data, {"c": "classification"}, 2, 6, 1, seed=0)
    contrastive_tune(model, data, steps, pad_id=0, lr=1e-2, progress=False, tuned_from=1)
    for hook in hooks:
        hook.remove()
    assert len(modes) == 2 * len(layers) and all(modes)  # every layer ran at every step, in train mode
    assert all(torch.equal(p, frozen[n]) for n, p in layers[0].named_parameters())  # yet the bottom did not move
    assert not model.backbone.training
