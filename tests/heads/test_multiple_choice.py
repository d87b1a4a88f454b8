"""Multiple-choice heads (heads/multiple_choice.py): cross-entropy over each example's choices,
choice-major rows, accuracy, exact parity with transformers' AutoModelForMultipleChoice, choices
from a list column or several columns, `model.rank`, ONNX, and one clear line for bad data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import headkit
from headkit import DataError, build_head, head_config
from headkit.errors import HeadConfigError, HeadkitError
from headkit.heads.multiple_choice import ChoiceScores

from conftest import FILLER, NEGATIVE, POSITIVE

ENDINGS = "ending0,ending1,ending2,ending3"


def choice_rows(n: int = 96, seed: int = 0, columns: bool = False) -> list[dict]:
    """A context and four endings; the right one holds the positive word (the others negative ones).
    `columns`: the endings in four columns (SWAG's layout) and the answer as a position; else a
    list column `choices` and the answer as a letter."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        answer = int(rng.integers(4))
        words = [rng.choice(POSITIVE) if k == answer else rng.choice(NEGATIVE) for k in range(4)]
        endings = [" ".join([str(w), *rng.choice(FILLER, 2)]) for w in words]
        context = " ".join(rng.choice(FILLER, 3))
        if columns:
            rows.append({"text": context, **{f"ending{k}": e for k, e in enumerate(endings)}, "label": answer})
        else:
            rows.append({"text": context, "choices": endings, "label": "ABCD"[answer]})
    return rows


def test_the_loss_is_cross_entropy_over_each_examples_choices_laid_out_choice_by_choice():
    head = build_head(head_config("multiple-choice", input_size=4))
    scores = torch.tensor([2.0, 0.0, 1.0, -1.0, 0.5, 3.0])  # 2 examples x 3 choices: (ex0 c0, ex1 c0, ex0 c1 ...)
    labels = torch.tensor([0, 2])
    loss, n = head.loss(scores, labels)
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, -1.0, 3.0]])
    assert n == 2 and float(loss) == pytest.approx(float(F.cross_entropy(logits, labels)))
    missing, none = head.loss(scores, torch.tensor([-100, -100]))
    assert none == 0 and missing.item() == 0.0
    with pytest.raises(HeadConfigError, match="5 rows do not split into 2 examples"):
        head.loss(scores[:5], labels)


def test_accuracy_reads_each_examples_choices_across_batches():
    head = build_head(head_config("multiple-choice", input_size=4))
    mask = torch.ones(6, 3)
    first = (
        head.codec.references(torch.tensor([0, 2]), mask),
        head.decode(torch.tensor([2.0, 0.0, 1.0, -1.0, 0.5, 3.0])),
    )
    second = (
        head.codec.references(torch.tensor([1, -100]), mask),
        head.decode(torch.tensor([0.0, 5.0, 1.0, 0.0, 0.0, 0.0])),
    )
    references, predictions = first[0] + second[0], first[1] + second[1]
    assert references[7] is None and references[0] == ("answer", 0, 2, 3) and references[3] == ("choice", 1)
    assert ChoiceScores().score(predictions, references) == {"accuracy": pytest.approx(1.0)}  # 3 labelled, all right
    assert ChoiceScores().chance(references) == {"accuracy": pytest.approx(1 / 3)}
    wrong = [*predictions[:6], 9.0, *predictions[7:]]  # the third example now picks its first choice
    assert ChoiceScores().score(wrong, references) == {"accuracy": pytest.approx(2 / 3)}


@pytest.fixture(scope="module")
def trained(tiny_text_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("choice") / "run"
    heads = {"answer": {"label": "label", "type": "multiple-choice"}}
    result = headkit.train(
        tiny_text_model, heads, train_dataset=choice_rows(), epochs=8, batch_size=16, lr=1e-2, backbone_lr=1e-3,
        progress=False, strategy="full", val_fraction=0.25, output_dir=run,
    )  # fmt: skip
    return result, run


def test_a_multiple_choice_head_learns_which_choice_is_right_and_rank_orders_them(trained):
    result, run = trained
    assert result.metrics["heads"]["answer"]["accuracy"] == 1.0
    model = headkit.load(run / "model")
    ranked = model.rank("the film was", ["a bad plot", "a great plot", "an awful plot"])
    assert ranked[0]["index"] == 1 and ranked[0]["text"] == "a great plot"
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0)
    assert ranked[0]["score"] > ranked[1]["score"] >= ranked[2]["score"]
    scores = [
        p["answer"]["score"] for p in model.predict([("the film was", "a bad plot"), ("the film was", "a great plot")])
    ]
    assert scores == pytest.approx(
        [ranked[1]["score"] if ranked[1]["index"] == 0 else ranked[2]["score"], ranked[0]["score"]], abs=1e-5
    )
    with pytest.raises(HeadkitError, match="no scoring head named 'nope'"):
        model.rank("the film was", ["a", "b"], head="nope")
    evaluated = model.evaluate(choice_rows(32, seed=7))
    assert evaluated["answer"]["accuracy"] > 0.9


def test_choices_from_several_columns_train_on_cached_features_as_the_backbone_scores_them(tiny_text_model):
    heads = {"answer": {"label": "label", "type": "multiple-choice", "text_pair": ENDINGS}}
    held_out = choice_rows(16, seed=5, columns=True)
    frozen = headkit.train(
        tiny_text_model, heads, train_dataset=choice_rows(64, columns=True), eval_dataset=held_out, epochs=2,
        batch_size=16, progress=False, strategy="frozen",
    )  # fmt: skip
    # scored from the cached pooled rows in the run, and through the backbone here: the same loss
    again = frozen.model.evaluate(held_out)
    assert again.losses["answer"] == pytest.approx(frozen.metrics["val_losses"]["answer"], rel=1e-4)
    assert again["answer"]["accuracy"] == frozen.metrics["heads"]["answer"]["accuracy"]


def test_the_head_on_pooler_is_exactly_transformers_multiple_choice_model_and_exports_to_it(tiny_text_model, tmp_path):
    from headkit.ship.export import export_transformers

    torch.manual_seed(0)
    model = headkit.MultiHeadModel.from_pretrained(
        tiny_text_model, heads={"answer": head_config("multiple-choice", pooling="pooler")}
    )
    torch.nn.init.normal_(model.heads["answer"].scorer[-1].weight, std=0.5)
    tokenizer = headkit.load_processor(tiny_text_model)
    saved = headkit.save(model, tmp_path / "saved", processor=tokenizer)
    export_transformers(saved, tmp_path / "hf")
    theirs = transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "BertForMultipleChoice"
    contexts, endings = ["the film was", "alice met"], [["good", "bad fun", "a plot"], ["bob", "paris", "london and"]]
    enc = tokenizer([c for c in contexts for _ in range(3)], [e for row in endings for e in row], padding=True,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        logits = theirs(**{k: v.reshape(2, 3, -1) for k, v in enc.items()}).logits  # (2 examples, 3 choices)
    ours = [
        [r["score"] for r in sorted(model.rank(c, e), key=lambda r: r["index"])]
        for c, e in zip(contexts, endings, strict=True)
    ]
    assert torch.allclose(logits, torch.tensor(ours), atol=1e-5)


def test_the_onnx_graph_scores_each_pair_as_the_model_does(trained, tmp_path):
    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference, predict_texts

    _, run = trained
    export_onnx(run, tmp_path / "onnx", optimize=False)
    pairs = [("the film was", "a great plot"), ("a movie", "an awful story and")]
    ours = [p["answer"]["score"] for p in predict_texts(*load_for_inference(run), pairs)]
    theirs = [p["answer"]["score"] for p in predict_texts(*load_for_inference(tmp_path / "onnx", engine="onnx"), pairs)]
    assert theirs == pytest.approx(ours, abs=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"choices": ["good plot", "bad plot", "dull plot"]}, "row 3 of .*: 3 choices where the rows before have 4"),
        ({"choices": ["good plot", " ", "dull", "bad"]}, "row 3 of .*: choice 1 in column 'choices' is empty"),
        ({"choices": "good plot"}, "row 3 of .*: column 'choices' should hold an example's choices"),
        ({"label": "E"}, "row 3 of .*answer 4 in column 'label', but the example has 4 choices"),
        ({"label": "maybe"}, "row 3 of .*: answer column 'label' holds 'maybe'"),
        ({"text": ""}, "row 3 of .*: text column 'text' is empty"),
    ],
)
def test_bad_choice_data_gets_one_clear_line_naming_the_row(change, message, tiny_text_model):
    rows = choice_rows(8)
    rows[2].update(change)
    heads = {"answer": {"label": "label", "type": "multiple-choice"}}
    with pytest.raises(DataError, match=message) as refused:
        headkit.train(tiny_text_model, heads, train_dataset=rows, epochs=1, progress=False)
    assert "\n" not in str(refused.value)


def test_choices_cannot_share_their_rows_with_other_heads_or_miss_their_column(tiny_text_model):
    beside = {"answer": {"label": "label", "type": "multiple-choice"}, "topic": {"label": "label"}}
    with pytest.raises(DataError, match=r"multiple-choice heads \['answer'\] read a context and its choices"):
        headkit.train(tiny_text_model, beside, train_dataset=choice_rows(8), epochs=1, progress=False)
    elsewhere = {"answer": {"label": "label", "type": "multiple-choice", "text_pair": "options"}}
    with pytest.raises(DataError, match="column 'options' not found"):
        headkit.train(tiny_text_model, elsewhere, train_dataset=choice_rows(8), epochs=1, progress=False)


def test_a_file_of_contexts_and_choices_is_answered_row_by_row_and_rank_runs_from_the_cli(trained, tmp_path, capsys):
    import csv
    import json

    from headkit.cli.main import main

    _, run = trained
    model = headkit.load(run / "model")
    rows = choice_rows(6, seed=9)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["predict", str(run), "--input", str(data), "--output", str(tmp_path / "p.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["choices"] for line in lines] == [r["choices"] for r in rows]
    for line, row in zip(lines, rows, strict=True):
        top = model.rank(row["text"], row["choices"])[0]
        assert line["answer"]["choice"] == top["index"] and line["answer"]["text"] == top["text"]
        assert line["answer"]["probabilities"][top["index"]] == pytest.approx(top["probability"], abs=1e-5)
    assert main(["predict", str(run), "--input", str(data), "--output", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["answer"]) for r in table] == [line["answer"]["choice"] for line in lines]
    assert set(table[0]) == {"text", "choices", "answer", "answer.text", "answer.probabilities", "answer.scores"}
    capsys.readouterr()
    query, candidates = "the film was", ["a dull plot", "a superb plot", "a poor plot"]
    flags = [a for c in candidates for a in ("--candidate", c)]
    assert main(["rank", str(run), "--query", query, *flags, "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in ranked] == [r["index"] for r in model.rank(query, candidates)]
    assert main(["predict", str(run), "--text", query, "--text_pair", candidates[1]]) == 0
    shown = capsys.readouterr().out
    assert f"{query} | {candidates[1]}" in shown and f"score {ranked[0]['score']:.4f}" in shown


def test_what_a_run_of_choices_cannot_do_is_refused_in_one_line_and_prediction_takes_any_count(
    trained, tiny_text_model, tmp_path
):
    import json

    import datasets

    from headkit.cli.main import main

    _, run = trained
    heads = {"answer": {"label": "label", "type": "multiple-choice"}}
    stream = datasets.IterableDataset.from_generator(lambda: iter(choice_rows(8)))
    refused = r"heads \['answer'\] \(pairs of texts, choices, images\) cannot train on a"
    with pytest.raises(DataError, match=refused):
        headkit.train(tiny_text_model, heads, train_dataset=stream, epochs=1, progress=False)
    sources = {
        "four": choice_rows(8),
        "three": [{**r, "choices": r["choices"][:3], "label": 0} for r in choice_rows(8)],
    }
    for name, rows in sources.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    two = {n: {**heads["answer"], "data": str(tmp_path / f"{n}.jsonl")} for n in sources}
    with pytest.raises(DataError, match=r"sources of \[3, 4\] rows per example"):
        headkit.train(tiny_text_model, two, epochs=1, progress=False)
    # predicting needs no common count: ARC-style files hold 3 to 5 choices
    rows = [{**r, "choices": r["choices"][: 2 + i % 3]} for i, r in enumerate(choice_rows(6, seed=3))]
    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["predict", str(run), "--input", str(data), "--output", str(tmp_path / "p.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [len(line["answer"]["probabilities"]) for line in lines] == [2, 3, 4, 2, 3, 4]
    assert main(["predict", str(run), "--text", "the film was"]) == 2  # a lone context is no pair to score
    plain = headkit.MultiHeadModel.from_pretrained(
        tiny_text_model, heads={"c": head_config("classification", labels=["a", "b"])}
    )
    with pytest.raises(HeadkitError, match=r"ranking needs the head that scores pairs; this model has none"):
        plain.rank("a", ["b", "c"])


def test_a_class_label_answer_column_is_read_as_the_position_it_holds(trained):
    import datasets

    result, _ = trained
    rows = choice_rows(16, seed=4, columns=True)
    names = ["first", "second", "third", "fourth"]  # a ClassLabel's names: read as text, they are no letters
    labelled = datasets.Dataset.from_list(rows).cast_column("label", datasets.ClassLabel(names=names))
    heads = {"answer": {"label": "label", "text_pair": ENDINGS}}
    assert result.model.evaluate(labelled, heads=heads) == result.model.evaluate(rows, heads=heads)
