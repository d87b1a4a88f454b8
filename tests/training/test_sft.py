"""Instruction tuning: chat-template rendering with labels on responses only, cutting from the
prompt's start, packing, bad data, and `headkit sft` end to end (LoRA and full, resume, generate)."""

import json
import logging

import pytest
import torch
import transformers

from headkit import DataError, HeadkitError, MultiHeadModel
from headkit.cli.main import main
from headkit.data.batching import model_inputs
from headkit.heads import IGNORE_INDEX, head_config
from headkit.heads.lm import CAUSAL_LM
from headkit.ship.generate import generate
from headkit.training.sft import (
    PLAIN_TEMPLATE,
    SFTConfig,
    conversations,
    encode,
    pack,
    packed_attention,
    render,
    sft,
    sft_batch,
)

from conftest import chat_tokenizer, reply_rows, save_chat_model, sentiment_rows, write_csv


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


def test_packing_keeps_every_token_and_label_in_fewer_rows_and_where_each_example_starts():
    examples = [([1] * n, [IGNORE_INDEX] * (n - 1) + [1]) for n in (5, 3, 7, 2, 6)]
    blocks = pack(examples, max_length=10)
    assert len(blocks) < len(examples) and all(len(b.ids) <= 10 for b in blocks)
    assert sum(len(b.ids) for b in blocks) == 23
    assert sum(sum(y != IGNORE_INDEX for y in b.labels) for b in blocks) == 5
    # positions restart at each example; its first token is no target (unpacked, nothing predicts it)
    [block] = pack([([1, 2], [1, 2]), ([3, 4, 5], [3, 4, 5])], max_length=10)
    assert block.ids == [3, 4, 5, 1, 2] and block.positions == [0, 1, 2, 0, 1]
    assert block.labels == [IGNORE_INDEX, 4, 5, IGNORE_INDEX, 2]
    batch = sft_batch(
        [
            {"input_ids": block.ids, "labels": {"lm": block.labels}, "position_ids": block.positions},
            {"input_ids": [6, 7], "labels": {"lm": [6, 7]}, "position_ids": [0, 1]},
        ],
        pad_id=0,
    )
    assert "attention_mask" not in batch  # a 2D mask would hide the borders from transformers
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]  # padding: a segment of its own
    assert batch["labels"]["lm"][1].tolist() == [6, 7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]


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


def training(model, replies, tmp_path, strategy: str, **options) -> SFTConfig:
    """A short, high learning-rate run that a tiny model learns from in a few epochs."""
    fields = dict(model=str(model), data=replies, output_dir=str(tmp_path / "run"), strategy=strategy, epochs=6,
                  lr=1e-2, backbone_lr=1e-2, lora_lr=2e-2, progress=False)  # fmt: skip
    return SFTConfig(**{**fields, **options})


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_sft_lowers_the_response_loss_and_the_run_generates(tiny_chat_model, replies, tmp_path, strategy):
    config = training(tiny_chat_model, replies, tmp_path, strategy, batch_size=8, max_length=32)
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


# ----------------------------------------------------------------------------- packing keeps examples apart

TINY = {"vocab_size": 0, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
DECODERS = {  # tiny configs of decoder families (vocab_size: the chat tokenizer's)
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True, **TINY),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=0, n_embd=32, n_layer=2, n_head=2),  # tied
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=1, sliding_window=8, **TINY),
    "gemma": lambda: transformers.GemmaConfig(num_key_value_heads=1, head_dim=16, **TINY),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=1, **TINY),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=0, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32
    ),
}


def save_decoder(path, kind: str):
    """A tiny random causal LM of one family with the chat tokenizer, saved to `path`."""
    tokenizer = chat_tokenizer()
    tokenizer.save_pretrained(path)
    config = DECODERS[kind]()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def chats(n: int = 9) -> list[list[dict[str, str]]]:
    """Conversations of different lengths, some of two turns."""
    rows = sentiment_rows(n)
    found = []
    for i, row in enumerate(rows):
        reply = "superb" if row["label"] == "pos" else "awful film"
        messages = [{"role": "user", "content": row["text"]}, {"role": "assistant", "content": reply}]
        if i % 3 == 0:
            messages += [{"role": "user", "content": "and the plot"}, {"role": "assistant", "content": "boring"}]
        found.append(messages)
    return found


def where_packed(example: list[int], blocks: list[list[int]], taken: set) -> tuple[int, int]:
    """The (block, offset) at which an example's ids sit in a packed block (each place used once)."""
    for b, block in enumerate(blocks):
        for start in range(len(block) - len(example) + 1):
            if (b, start) not in taken and block[start : start + len(example)] == example:
                taken.add((b, start))
                return b, start
    raise AssertionError("an example is missing from the packed blocks")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "mistral", "gemma", "qwen2"])
def test_a_packed_batch_has_the_loss_and_logits_of_its_examples_alone(tmp_path, kind):
    path = save_decoder(tmp_path, kind)
    tokenizer = chat_tokenizer()
    conversations_ = chats()
    alone = encode(conversations_, tokenizer, max_length=64, source="chats")
    packed = encode(conversations_, tokenizer, max_length=64, source="chats", packing=True)
    assert 1 < len(packed) < len(alone)  # several blocks of several examples (the last one padded)
    model = MultiHeadModel.on_backbone(path, {"lm": head_config(CAUSAL_LM)}, processor=tokenizer)
    pad = tokenizer.pad_token_id or 0
    with torch.no_grad(), packed_attention(model):  # what `sft` trains under with --packing
        batch = sft_batch([packed[i] for i in range(len(packed))], pad)
        out = model(labels=batch["labels"], **model_inputs(batch))
        singles = [sft_batch([alone[i]], pad) for i in range(len(alone))]
        outs = [model(labels=one["labels"], **model_inputs(one)) for one in singles]
    counts = [int((one["labels"]["lm"][:, 1:] != IGNORE_INDEX).sum()) for one in singles]
    token_weighted = sum(float(o.losses["lm"]) * n for o, n in zip(outs, counts, strict=True)) / sum(counts)
    assert float(out.losses["lm"]) == pytest.approx(token_weighted, abs=1e-5)
    taken: set[tuple[int, int]] = set()
    for ids, single in zip(alone.input_ids, outs, strict=True):
        b, start = where_packed(ids, packed.input_ids, taken)
        inside = out.outputs["lm"][b, start : start + len(ids)]
        torch.testing.assert_close(inside, single.outputs["lm"][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_sft_with_packing_trains_on_examples_that_do_not_see_each_other(
    tiny_chat_model, replies, tmp_path, monkeypatch, strategy
):
    seen = []
    original = transformers.LlamaModel.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.LlamaModel, "forward", spy)
    config = training(tiny_chat_model, replies, tmp_path, strategy, packing=True, batch_size=4, max_length=64)
    metrics = sft(config).metrics
    assert metrics["train_examples"] < 43  # packed
    assert metrics["response_loss_after"] < metrics["response_loss_before"] - 0.5
    assert seen and all(k.get("attention_mask") is None and k.get("use_cache") is False for k in seen)
    positions = seen[0]["position_ids"]
    assert int((positions == 0).sum(dim=1).min()) > 1  # every block restarts its positions for each example


def test_packing_is_refused_for_a_backbone_that_lets_packed_examples_see_each_other(replies, tmp_path):
    path = save_decoder(tmp_path / "opt", "opt")  # OPT builds its mask without the position ids
    config = SFTConfig(model=str(path), data=replies, output_dir=str(tmp_path / "run"), packing=True, progress=False)
    with pytest.raises(HeadkitError, match="--packing") as error:
        sft(config)
    assert "\n" not in str(error.value)
