"""Decoder LLMs as backbones: a tokenizer without a pad token gets one without new embeddings, and
`last` pooling reads each text's last real token with right padding, left padding and pad == eos."""

from pathlib import Path

import pytest
import torch
import transformers

from headkit import MultiHeadModel, head_config
from headkit.backbone import load_processor

from conftest import save_decoder, sentiment_rows, write_csv


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder(request, tmp_path_factory) -> Path:
    return save_decoder(tmp_path_factory.mktemp(request.param), request.param)


def test_a_tokenizer_without_pad_token_pads_with_eos_and_keeps_its_vocabulary(decoder, capsys):
    raw = transformers.AutoTokenizer.from_pretrained(decoder)
    assert raw.pad_token is None
    tokenizer = load_processor(decoder)
    assert tokenizer.pad_token == "<eos>" and len(tokenizer) == len(raw)
    assert "no pad token; padding with '<eos>'" in capsys.readouterr().err
    batch = tokenizer(["good film", "a very dull plot"], padding=True)  # "Cannot handle batch sizes > 1" before
    assert [sum(m) for m in batch["attention_mask"]] == [2, 4]


def _padded(rows: list[list[int]], pad: int, left: bool) -> dict[str, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
def test_last_pooling_reads_the_last_real_token_however_the_batch_is_padded(decoder, left):
    tokenizer = load_processor(decoder)
    heads = {"c": head_config("classification", labels=["a", "b"], pooling="last", dropout=0.0)}
    model = MultiHeadModel.from_pretrained(decoder, heads).eval()
    eos = tokenizer.eos_token_id
    rows = [
        tokenizer("good film")["input_ids"] + [eos],  # ends with a real eos, which is also the pad token
        tokenizer("the plot was very dull and the acting boring")["input_ids"],
        tokenizer("superb")["input_ids"],
    ]
    with torch.no_grad():
        batched = model(**_padded(rows, eos, left)).outputs["c"]
        alone = torch.cat([model(**_padded([row], eos, left)).outputs["c"] for row in rows])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_a_decoder_trains_a_head_and_predicts_in_batches(decoder, tmp_path, capsys):
    from headkit.ship.predict import load_for_inference, predict_texts
    from headkit.training.recipe import TrainConfig, train

    data = write_csv(tmp_path / "d.csv", sentiment_rows(32))
    config = TrainConfig(
        model=str(decoder),
        data=str(data),
        head=["sentiment:label"],
        pooling="last",
        epochs=2,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    train(config)
    model, tokenizer = load_for_inference(tmp_path / "run")
    assert tokenizer.pad_token == "<eos>"  # saved with the run
    texts = ["the film was good", "a dull plot", "superb acting and a lovely story"]
    together = [p["sentiment"]["probs"] for p in predict_texts(model, tokenizer, texts)]
    alone = [predict_texts(model, tokenizer, [t])[0]["sentiment"]["probs"] for t in texts]
    tokenizer.padding_side = "left"
    left = [p["sentiment"]["probs"] for p in predict_texts(model, tokenizer, texts)]
    for a, b, c in zip(together, alone, left, strict=True):
        assert a == pytest.approx(b, abs=1e-5) and c == pytest.approx(b, abs=1e-5)


def test_lora_with_a_classifier_and_the_lm_head_survives_save_reload_and_merge(tmp_path):
    """The peft #876 class of bug: heads beside a LoRA backbone lost on save or on merge."""
    from headkit.model import load as load_saved
    from headkit.ship.export import load_merged
    from headkit.ship.save import save
    from headkit.training.strategies import apply_lora

    directory = save_decoder(tmp_path / "llama", "llama")
    heads = {
        "sentiment": head_config("classification", labels=["neg", "pos"], pooling="last"),
        "lm": head_config("causal-lm"),
    }
    model = MultiHeadModel.from_pretrained(directory, heads)
    model.backbone = apply_lora(model.backbone, r=4, dropout=0.0)
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name or name.startswith("heads.sentiment"):
            p.data.normal_(0, 0.2)  # as if trained: the adapter and the head now change the outputs
    tokenizer = load_processor(directory)
    batch = dict(tokenizer(["good film", "a very dull plot"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = model.eval()(**batch).outputs
    save(model, tmp_path / "save", tokenizer)
    assert (tmp_path / "save" / "adapter" / "adapter_config.json").is_file()
    loaded = load_saved(tmp_path / "save").eval()  # the adapter reloaded beside its base weights
    merged = load_merged(tmp_path / "save")[0]  # what export uses: the adapter merged in
    assert type(merged.backbone).__name__ == "LlamaModel"
    for reloaded in (loaded, merged):
        assert reloaded.tied_parameter_names() == model.tied_parameter_names() != set()  # LM head shares embeddings
        with torch.no_grad():
            got = reloaded(**batch).outputs
        for name in heads:
            assert torch.allclose(got[name], expected[name], atol=1e-4), name


@pytest.mark.parametrize("side", ["left", "right"])
def test_every_head_predicts_a_text_in_a_padded_batch_as_it_does_alone(decoder, tiny_text_model, side):
    """Llama, Gemma and Qwen tokenizers pad on the left: per-token heads (tags, spans, LM) must
    decode each text's own tokens, and every backbone (BERT's absolute positions too) must read a
    left-padded text as the same text."""
    from headkit.ship.predict import predict_texts

    heads = {
        "tags": head_config("token-classification", labels=["O", "B-X", "I-X"]),
        "span": head_config("span"),
        "first": head_config("classification", labels=["a", "b"], pooling="cls"),
        "mean": head_config("regression", labels=["y"], pooling="mean"),
    }
    texts = ["good film", "the plot was very dull and the acting boring", "superb", "alice met bob in paris"]
    pooler = {"pooler": head_config("classification", labels=["a", "b"], pooling="pooler")}  # BERT's reads position 0
    for path, extra in (
        (decoder, {"lm": head_config("causal-lm")}),
        (tiny_text_model, {"lm": head_config("masked-lm"), **pooler}),
    ):
        model = MultiHeadModel.from_pretrained(path, {**heads, **extra})
        torch.manual_seed(0)
        for p in model.heads.parameters():  # decisive weights, so that any difference shows
            torch.nn.init.normal_(p, std=0.5)
        tokenizer = load_processor(path)
        tokenizer.padding_side = side
        batched = predict_texts(model, tokenizer, texts)
        for text, together in zip(texts, batched, strict=True):
            alone = predict_texts(model, tokenizer, [text])[0]
            assert together["tags"] == alone["tags"] and together["lm"] == alone["lm"], text
            span = together["span"]["start"], together["span"]["end"]
            assert span == (alone["span"]["start"], alone["span"]["end"]), text
            assert together["first"]["probs"]["a"] == pytest.approx(alone["first"]["probs"]["a"], abs=1e-5), text
            assert together["mean"]["y"] == pytest.approx(alone["mean"]["y"], abs=1e-4), text
            if "pooler" in together:
                assert together["pooler"]["probs"]["a"] == pytest.approx(alone["pooler"]["probs"]["a"], abs=1e-5), text
