"""Calibrated probabilities: ECE, temperature scaling fitted on validation and folded into the
head, so the saved model predicts and serves the calibrated scores (heads/calibration.py)."""

import random

import numpy as np
import pytest
import torch
from scipy.special import softmax

import headkit
from headkit.heads import calibration
from headkit.ship.predict import predict_texts

from conftest import sentiment_rows


def test_ece_is_the_binned_gap_between_confidence_and_accuracy():
    confidences = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 1, 1, 0, 1, 0])
    # bin (0.933, 1]: confidence 0.95, accuracy 0.75 (4 examples); bin (0.533, 0.6]: 0.55 vs 0.5 (2)
    assert calibration.expected_calibration_error(confidences, correct) == pytest.approx((4 * 0.2 + 2 * 0.05) / 6)
    assert calibration.expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 4))
    truth = softmax(logits / 2.5, axis=-1)  # the labels follow logits 2.5x flatter than the model's
    targets = np.array([rng.choice(4, p=p) for p in truth])
    probs = softmax(logits, axis=-1)
    temperature = calibration.fit_temperature(probs, targets)
    assert temperature == pytest.approx(2.5, rel=0.1)
    before = calibration.expected_calibration_error(probs.max(-1), probs.argmax(-1) == targets)
    fitted = calibration.scaled(probs, temperature)
    after = calibration.expected_calibration_error(fitted.max(-1), fitted.argmax(-1) == targets)
    assert after < before / 3
    assert (fitted.argmax(-1) == probs.argmax(-1)).all()  # decisions unchanged
    assert calibration.nll(probs, targets, temperature) < calibration.nll(probs, targets)


def test_no_temperature_is_fitted_on_too_few_examples_or_when_every_answer_is_right():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(200, 3)), axis=-1)
    wrong = (probs.argmax(-1) + 1) % 3
    assert calibration.fit_temperature(probs[:49], wrong[:49]) == 1.0
    assert calibration.fit_temperature(probs, probs.argmax(-1)) == 1.0  # all right: no minimum, T would run to 0
    assert calibration.fit_temperature(probs, wrong) != 1.0


def test_a_head_type_of_its_own_without_an_output_layer_to_hold_t_is_left_as_it_is():
    from types import SimpleNamespace

    from headkit.heads.scoring import ClassScores

    head = SimpleNamespace(config=SimpleNamespace(labels=["a", "b"]))  # decodes probs, has no scale_output
    predictions = [{"label": "a", "probs": {"a": 0.9, "b": 0.1}} for _ in range(60)]
    references = ["a", "b"] * 30
    assert ClassScores().__get__(head).scale_temperature(predictions, references) is None
    assert predictions[0]["probs"] == {"a": 0.9, "b": 0.1}


def noisy_rows(n: int, seed: int = 0) -> list[dict]:
    """The toy sentiment task with a fifth of its labels flipped: no head is always right on it."""
    rng = random.Random(seed)
    rows = sentiment_rows(n, seed)
    for row in rows:
        if rng.random() < 0.2:
            row["label"] = "neg" if row["label"] == "pos" else "pos"
    return rows


@pytest.fixture(scope="module")
def runs(tiny_text_model, tmp_path_factory):
    """The same run with and without temperature scaling (300 rows, 60 validation examples; the
    frozen random backbone's mean-pooled words take the head to about 2/3 right)."""
    rows = noisy_rows(300)
    fast = dict(epochs=4, batch_size=16, lr=3e-2, val_fraction=0.2, progress=False, strategy="frozen")
    out = {}
    for scaled in (True, False):
        where = tmp_path_factory.mktemp(f"scaled-{scaled}")
        out[scaled] = headkit.train(
            tiny_text_model, {"sentiment": {"label": "label", "pooling": "mean"}}, train_dataset=rows,
            output_dir=where / "run", temperature_scaling=scaled, **fast,
        )  # fmt: skip
    return out


def test_a_run_fits_a_temperature_on_validation_and_reports_ece_before_and_after(runs):
    fit = runs[True].metrics["calibration"]["sentiment"]
    assert set(fit) == {"temperature", "nll_before", "nll_after", "ece_before", "ece_after", "examples"}
    assert fit["temperature"] != 1.0 and fit["examples"] == 60
    assert 0.55 < runs[True].metrics["heads"]["sentiment"]["accuracy"] < 1  # learned something, not all
    assert fit["nll_after"] < fit["nll_before"]
    scores, plain = runs[True].metrics["heads"]["sentiment"], runs[False].metrics["heads"]["sentiment"]
    assert scores["ece"] == pytest.approx(fit["ece_after"]) and plain["ece"] == pytest.approx(fit["ece_before"])
    assert scores["accuracy"] == plain["accuracy"]  # decisions unchanged
    assert runs[False].metrics["calibration"] == {}
    assert runs[True].metrics["val_losses"]["sentiment"] == pytest.approx(fit["nll_after"], rel=1e-4)
    assert (runs[True].run_dir / "reliability_sentiment.png").stat().st_size > 10_000
    assert not (runs[False].run_dir / "reliability_sentiment.png").exists()


def test_the_saved_model_predicts_the_calibrated_probabilities(runs, tiny_text_model):
    texts = ["the film was good", "a dull boring plot", "acting and story"]
    temperature = runs[True].metrics["calibration"]["sentiment"]["temperature"]
    processor = headkit.load_processor(tiny_text_model)
    scaled = predict_texts(headkit.load(runs[True].run_dir / "model"), processor, texts)
    plain = predict_texts(headkit.load(runs[False].run_dir / "model"), processor, texts)
    for a, b in zip(scaled, plain, strict=True):
        names = list(b["sentiment"]["probs"])
        expected = calibration.scaled(np.array([b["sentiment"]["probs"][n] for n in names]), temperature)
        assert [a["sentiment"]["probs"][n] for n in names] == pytest.approx(expected.tolist(), abs=1e-5)
        assert a["sentiment"]["label"] == b["sentiment"]["label"]


def test_the_output_layer_holds_the_temperature(runs):
    scaled = runs[True].model.heads["sentiment"].classifier[-1].weight
    plain = runs[False].model.heads["sentiment"].classifier[-1].weight
    temperature = runs[True].metrics["calibration"]["sentiment"]["temperature"]
    assert torch.allclose(scaled * temperature, plain, atol=1e-6)


def test_a_bf16_run_trains_and_its_final_scores_are_the_calibrated_weights(tiny_text_model, tmp_path):
    """Under mixed precision accelerate rebuilds the model's output (its loss was the whole
    output once), and the final scores run inside one autocast region, whose cached bf16 copy of
    the output layer would have scored the heads again on the weights from before T."""
    rows, heads = noisy_rows(300), {"sentiment": {"label": "label", "pooling": "mean"}}
    headkit.train(tiny_text_model, heads, train_dataset=rows, epochs=1, progress=False, mixed_precision="no")
    result = headkit.train(  # a second run in this process, at another precision (accelerate kept the first's)
        tiny_text_model, heads, train_dataset=rows, epochs=4, batch_size=16, lr=3e-2, val_fraction=0.2,
        progress=False, strategy="frozen", mixed_precision="bf16", output_dir=tmp_path / "run",
    )  # fmt: skip
    fit = result.metrics["calibration"]["sentiment"]
    loss = result.metrics["val_losses"]["sentiment"]
    assert abs(loss - fit["nll_after"]) < abs(loss - fit["nll_before"])  # scored on the calibrated weights
    assert result.metrics["heads"]["sentiment"]["ece"] == fit["ece_after"]
