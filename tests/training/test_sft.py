"""Instruction tuning: chat-template rendering with labels on responses only, cutting from the
prompt's start, packing, bad data, and `headkit sft` end to end (LoRA and full, resume, generate)."""

import json
import logging

import pytest

from headkit import DataError, HeadkitError, MultiHeadModel
from headkit.cli.main import main
from headkit.heads import IGNORE_INDEX
from headkit.ship.generate import generate
from headkit.training.sft import PLAIN_TEMPLATE, SFTConfig, conversations, encode, pack, render, sft

from conftest import chat_tokenizer, reply_rows, save_chat_model, write_csv


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    return save_chat_model(tmp_path_factory.mktemp("chat-llama"))


@pytest.fixture(scope="module")
def replies(tmp_path_factory) -> str:
    return str(write_csv(tmp_path_factory.mktemp("sft") / "replies.csv", reply_rows()))


def test_labels_cover_the_responses_and_their_end_marker_only():
    tokenizer = chat_tokenizer()
    messages = [
        {"role": "user", "content": "the film was good"},
        {"role": "assistant", "content": "superb film"},
        {"role": "user", "content": "and the plot"},
        {"role": "assistant", "content": "boring"},
    ]
    ids, labels = render(tokenizer, messages)
    assert ids == tokenizer.apply_chat_template(messages)["input_ids"]  # the same tokens as the whole text
    learned = [tokenizer.convert_ids_to_tokens(i) for i, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX]
    assert learned == ["superb", "film", "<|im_end|>", "boring", "<|im_end|>"]
    assert all(y in (IGNORE_INDEX, i) for i, y in zip(ids, labels, strict=True))
    # the prompt part is what generation tokenises (template + generation prompt)
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True)["input_ids"]
    assert ids[: len(prompt)] == prompt and all(y == IGNORE_INDEX for y in labels[: len(prompt)])


def test_too_long_examples_lose_prompt_tokens_from_the_start_never_response_tokens(caplog):
    tokenizer = chat_tokenizer()
    long_prompt = " ".join(["the film"] * 20)
    chats = [
        [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "good"}],
        [{"role": "user", "content": "plot"}, {"role": "assistant", "content": " ".join(["boring"] * 40)}],
        [{"role": "user", "content": "plot"}, {"role": "assistant", "content": "fine"}],
    ]
    with caplog.at_level(logging.INFO, logger="headkit"):
        data = encode(chats, tokenizer, max_length=24, source="chats.csv")
    assert "1 of 3 examples were longer than 24 tokens" in caplog.text and "1 were left out" in caplog.text
    assert len(data) == 2 and len(data.input_ids[0]) == 24
    kept = [i for i, y in zip(data.input_ids[0], data.labels["lm"][0], strict=True) if y != IGNORE_INDEX]
    assert tokenizer.convert_ids_to_tokens(kept) == ["good", "<|im_end|>"]
    assert data.input_ids[0] == render(tokenizer, chats[0])[0][-24:]  # the first tokens went


def test_packing_keeps_every_token_and_label_in_fewer_rows():
    examples = [([1] * n, [IGNORE_INDEX] * (n - 1) + [1]) for n in (5, 3, 7, 2, 6)]
    blocks = pack(examples, max_length=10)
    assert len(blocks) < len(examples) and all(len(ids) <= 10 for ids, _ in blocks)
    assert sorted(sum(len(ids) for ids, _ in blocks) for _ in [0]) == [23]
    assert sum(sum(y != IGNORE_INDEX for y in labels) for _, labels in blocks) == 5


def test_bad_rows_are_named(tmp_path):
    config = SFTConfig(data="x")
    with pytest.raises(DataError, match="row 2 of d: the response is empty"):
        conversations([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": " "}], "d", config)
    with pytest.raises(DataError, match="no assistant turn"):
        conversations([{"messages": [{"role": "user", "content": "hi"}]}], "d", config)
    with pytest.raises(DataError, match="needs a role"):
        conversations([{"messages": [{"role": "robot", "content": "hi"}]}], "d", config)
    with pytest.raises(DataError, match="has no column 'response'"):
        conversations([{"prompt": "a", "answer": "b"}], "d", config)
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("prompt,response\ncaf\xe9,oui\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        sft(SFTConfig(model="x", data=str(latin)))


def test_a_tokenizer_without_template_gets_the_plain_one_or_a_clear_error(tmp_path, caplog):
    from headkit.training.sft import use_chat_template

    plain = chat_tokenizer(template=None)
    with caplog.at_level(logging.INFO, logger="headkit"):
        use_chat_template(plain, "tiny")
    assert plain.chat_template == PLAIN_TEMPLATE and "plain one" in caplog.text
    ids, labels = render(plain, [{"role": "user", "content": "good"}, {"role": "assistant", "content": "fine"}])
    learned = [plain.convert_ids_to_tokens(i) for i, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX]
    assert learned[0] == "fine" and learned[-1] == "<eos>"
    with pytest.raises(HeadkitError, match="neither a chat template nor an end-of-sequence token"):
        use_chat_template(chat_tokenizer(template=None, eos=False), "tiny")


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_sft_lowers_the_response_loss_and_the_run_generates(tiny_chat_model, replies, tmp_path, strategy):
    config = SFTConfig(
        model=str(tiny_chat_model),
        data=replies,
        output_dir=str(tmp_path / "run"),
        strategy=strategy,
        epochs=6,
        batch_size=8,
        lr=1e-2,
        backbone_lr=1e-2,
        lora_lr=2e-2,
        max_length=32,
        progress=False,
    )
    result = sft(config)
    metrics = result.metrics
    assert metrics["response_loss_after"] < metrics["response_loss_before"] - 0.5
    answer = generate(str(tmp_path / "run"), "the film was superb", max_new_tokens=3)
    assert isinstance(answer, str) and answer.split()[0] in ("superb", "awful")


def test_cli_sft_packs_resumes_and_refuses_bad_values(tiny_chat_model, replies, tmp_path, monkeypatch, capsys):
    base = ["sft", "--model", str(tiny_chat_model), "--data", replies, "--output_dir", str(tmp_path / "run")]
    args = [*base, "--epochs", "2", "--batch_size", "8", "--max_length", "64", "--packing", "--no_progress"]
    assert main([*args, "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "packing: true" in printed and "lora_targets:\n- all-linear" in printed  # strategy lora's defaults
    calls = {"n": 0}
    original = MultiHeadModel.forward_heads

    def crash_on_the_second_step(self, *a, **k):
        calls["n"] += self.training
        if calls["n"] == 2 and self.training:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(MultiHeadModel, "forward_heads", crash_on_the_second_step)
    assert main([*args, "--save_every", "1"]) == 130
    assert "continue with the same command and --resume" in capsys.readouterr().err
    monkeypatch.setattr(MultiHeadModel, "forward_heads", original)
    assert main([*args, "--save_every", "1", "--resume"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_examples"] < 43  # packed: fewer sequences than the 43 training conversations
    assert main([*base, "--strategy", "frozen"]) == 2
    assert "--strategy 'frozen': choose one of full, lora" in capsys.readouterr().err
