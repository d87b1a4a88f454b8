"""The seq2seq head: a warm-started decoder with cross-attention on an encoder backbone, trained with
teacher forcing beside other heads, generating with greedy and beam search, saved and reloaded."""

import logging
import random

import pytest
import torch
import transformers

import headkit
from headkit import DataError, HeadConfigError, HeadkitError, HeadMismatchError, MultiHeadModel, head_config
from headkit.data.tasks import TaskSpec
from headkit.heads import IGNORE_INDEX
from headkit.ship.predict import load_for_inference, predict_texts
from headkit.training.recipe import TrainConfig, train

from conftest import FILLER, NEGATIVE, POSITIVE, WORDS, sentiment_rows, tiny_config, write_csv


def titled_rows(n: int = 60) -> list[dict]:
    """Sentiment rows whose `title` is the review's sentiment word + "film" (every third one missing)."""
    rows = sentiment_rows(n)
    for i, row in enumerate(rows):
        word = next(w for w in row["text"].split() if w in POSITIVE + NEGATIVE)
        row["title"] = f"{word} film" if i % 3 else ""
    return rows


@pytest.fixture(scope="module")
def titled(tmp_path_factory) -> str:
    return str(write_csv(tmp_path_factory.mktemp("data") / "titled.csv", titled_rows()))


def seq2seq_model(path, **fields) -> MultiHeadModel:
    torch.manual_seed(0)
    return MultiHeadModel.from_pretrained(path, {"title": head_config("seq2seq", **fields)}).eval()


def test_the_decoder_is_warm_started_from_the_backbone_with_new_cross_attention(tiny_text_model):
    model = seq2seq_model(tiny_text_model)
    decoder = model.heads["title"].decoder
    layer = decoder.base_model.encoder.layer[0]
    source = model.backbone.encoder.layer[0]
    assert torch.equal(layer.attention.self.query.weight, source.attention.self.query.weight)
    assert hasattr(layer, "crossattention") and decoder.config.is_decoder
    assert decoder.get_output_embeddings().weight is decoder.get_input_embeddings().weight  # tied output
    cold = seq2seq_model(tiny_text_model, warm_start=False).heads["title"].decoder
    assert not torch.equal(
        cold.base_model.encoder.layer[0].attention.self.query.weight, source.attention.self.query.weight
    )
    # the tokenizer's [CLS] starts and [SEP] ends a target
    tokenizer = headkit.load_processor(tiny_text_model)
    ids = model.heads["title"].token_ids
    assert (ids["start_token_id"], ids["end_token_id"]) == (tokenizer.cls_token_id, tokenizer.sep_token_id)


def test_teacher_forcing_skips_missing_targets_and_an_empty_batch_keeps_a_graph(tiny_text_model):
    model = seq2seq_model(tiny_text_model).train()
    batch = headkit.load_processor(tiny_text_model)(
        ["good film", "the plot was dull"], padding=True, return_tensors="pt"
    )
    labels = torch.tensor([[2, 5, 6, 3], [IGNORE_INDEX] * 4])
    out = model(**batch, labels={"title": labels})
    assert out.counts == {"title": 1} and out.loss > 0
    out.loss.backward()
    assert model.heads["title"].decoder.base_model.encoder.layer[0].crossattention.self.query.weight.grad is not None
    empty = model(**batch, labels={"title": torch.full((2, 4), IGNORE_INDEX)})
    assert empty.losses == {} and float(empty.loss.detach()) == 0.0 and empty.loss.requires_grad


def test_greedy_generation_equals_step_by_step_decoding_and_beams_search(tiny_text_model):
    model = seq2seq_model(tiny_text_model, max_new_tokens=6)
    head = model.heads["title"]
    batch = headkit.load_processor(tiny_text_model)(
        ["good film", "a very dull plot"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        features = model.forward_features(batch)
        memory, mask = features.at(-1), features.mask
        fast = head.generate(memory, mask)
        ids = torch.full((2, 1), head.token_ids["start_token_id"])
        for _ in range(6):  # no cache: the whole prefix every step
            logits = head.decoder(
                input_ids=ids, encoder_hidden_states=memory, encoder_attention_mask=mask, use_cache=False
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    end = head.token_ids["end_token_id"]
    for row_fast, row_slow in zip(fast.tolist(), ids.tolist(), strict=True):
        n = row_slow.index(end) + 1 if end in row_slow else len(row_slow)
        assert row_fast[:n] == row_slow[:n]
    beams = head.generate(memory, mask, num_beams=3)
    assert beams.shape[0] == 2 and (beams[:, 0] == head.token_ids["start_token_id"]).all()
    texts = head.decode(memory, mask)
    assert all(isinstance(t, str) for t in texts)


def test_a_headline_head_trains_beside_a_classifier_and_reloads_generating_the_same(tiny_text_model, titled, tmp_path):
    config = TrainConfig(
        model=str(tiny_text_model),
        tasks=[TaskSpec("sentiment", titled), TaskSpec("title", titled, label="title", type="seq2seq")],
        output_dir=str(tmp_path / "run"),
        strategy="full",
        epochs=6,
        batch_size=8,
        lr=3e-3,
        backbone_lr=1e-3,
        val_fraction=0.2,
        patience=0,
        progress=False,
    )
    result = train(config)
    epochs = result.metrics["epochs"]
    assert epochs[-1]["val_losses"]["title"] < epochs[0]["val_losses"]["title"]  # it learns
    assert {"rouge1", "rouge2", "rougeL", "perplexity"} <= set(result.metrics["heads"]["title"])
    model, tokenizer = load_for_inference(tmp_path / "run")
    texts = ["the film superb was plot", "acting awful movie story"]
    predictions = predict_texts(model, tokenizer, texts)
    assert all(isinstance(p["title"], str) and p["sentiment"]["label"] in ("pos", "neg") for p in predictions)
    again = predict_texts(*load_for_inference(tmp_path / "run"), texts)
    assert [p["title"] for p in again] == [p["title"] for p in predictions]
    pipe = headkit.pipeline(tmp_path / "run")
    assert pipe(texts[0])["title"] == {"generated_text": predictions[0]["title"]}


def test_saved_weights_hold_a_tied_decoder_output_once_and_reload_tied(tiny_text_model, tmp_path):
    from headkit.ship.load import head_tensors
    from headkit.ship.save import read_manifest

    model = seq2seq_model(tiny_text_model)
    headkit.save(model, tmp_path / "save")
    names = set(head_tensors(tmp_path / "save", read_manifest(tmp_path / "save"), "title"))
    assert not any("cls.predictions.decoder.weight" in n for n in names)
    loaded = headkit.load(tmp_path / "save").heads["title"].decoder
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert torch.equal(loaded.get_input_embeddings().weight, model.heads["title"].decoder.get_input_embeddings().weight)


def test_long_targets_are_cut_with_a_note_and_bad_targets_are_refused(tiny_text_model, tmp_path, caplog):
    from headkit.data.tasks import prepare

    tokenizer = headkit.load_processor(tiny_text_model)
    long_rows = [{"text": "good film", "title": " ".join(random.Random(i).choices(FILLER, k=90))} for i in range(4)]
    with caplog.at_level(logging.INFO, logger="headkit"):
        data = prepare(
            [TaskSpec("t", str(write_csv(tmp_path / "long.csv", long_rows)), "title", type="seq2seq")],
            tokenizer,
            32,
            val_fraction=0.0,
        )
    assert "4 of 4 targets" in caplog.text and "cut" in caplog.text
    assert all(len(y) == 64 and y[-1] == tokenizer.sep_token_id for y in data.train.labels["t"])
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": "good film", "title": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match="holds 3, not text"):
        prepare([TaskSpec("t", str(numbers), "title", type="seq2seq")], tokenizer, 32, val_fraction=0.0)


def test_a_backbone_with_no_decoder_form_or_a_tokenizer_without_end_token_is_refused(tiny_text_model):
    vit = transformers.ViTModel(tiny_config("vit"))
    with pytest.raises(HeadMismatchError, match="cannot be built on a 'vit' backbone"):
        MultiHeadModel(vit, {"t": head_config("seq2seq")})
    from tokenizers import Tokenizer, models

    words = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "good": 1}, unk_token="<unk>")), unk_token="<unk>"
    )  # no start, end or padding token
    with pytest.raises(HeadConfigError, match=r"no start .* or end .* token"):
        MultiHeadModel(headkit.load_backbone(tiny_text_model), {"t": head_config("seq2seq")}, processor=words)


# ----------------------------------------------------------------------------- encoder-decoder checkpoints


def save_seq2seq_checkpoint(path, kind: str, tie: bool = True):
    """A tiny random T5 or BART ForConditionalGeneration with a word-level tokenizer (T5: no bos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = ["<pad>", "</s>", "<unk>"] if kind == "t5" else ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate([*special, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    names = {
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        **({"bos_token": "<s>"} if kind == "bart" else {}),
    }
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, **names)
    small = {"vocab_size": len(vocab), "d_model": 32, "tie_word_embeddings": tie}
    if kind == "t5":
        config = transformers.T5Config(d_kv=16, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0, **small)
        model_class = transformers.T5ForConditionalGeneration
    else:
        config = transformers.BartConfig(
            encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, forced_eos_token_id=None, **small,
        )  # fmt: skip
        model_class = transformers.BartForConditionalGeneration
    config.tie_word_embeddings = tie  # T5's config sets True in __init__ whatever it is given
    torch.manual_seed(0)
    model = model_class(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model.eval(), tokenizer


@pytest.fixture(scope="module", params=["t5", "bart"])
def encoder_decoder(request, tmp_path_factory):
    return save_seq2seq_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def test_inspect_shows_the_decoder_lm_head_tied_to_the_shared_embeddings(encoder_decoder):
    from headkit.backbone import inspect_model

    report = inspect_model(encoder_decoder[0])
    assert report.head_kind == "seq2seq" and report.head_modules == {"lm_head": "Linear"}
    assert report.tied_embeddings and report.params_head == 0  # the output is the shared embedding matrix


def test_the_head_on_an_encoder_decoder_is_the_checkpoint_itself(encoder_decoder):
    path, reference, tokenizer = encoder_decoder
    model = MultiHeadModel.from_pretrained(path, {"s": head_config("seq2seq", max_new_tokens=6)}).eval()
    head = model.heads["s"]
    batch = tokenizer(["the film was good", "a dull plot"], return_tensors="pt", padding=True)
    start, end, pad = (head.token_ids[f"{t}_token_id"] for t in ("start", "end", "pad"))
    with torch.no_grad():
        features = model.forward_features(batch)
        ours = head.generate(features.at(-1), features.mask)
        theirs = reference.generate(**batch, max_new_tokens=6, decoder_start_token_id=start, eos_token_id=end,
                                    pad_token_id=pad, do_sample=False, num_beams=1)  # fmt: skip
    assert ours.tolist() == theirs.tolist()
    labels = torch.tensor([[start, 5, 6, end], [start, 7, end, IGNORE_INDEX]])
    with torch.no_grad():
        loss = model(**batch, labels={"s": labels}).losses["s"]
        expected = reference(**batch, decoder_input_ids=labels[:, :-1].clamp(min=0), labels=labels[:, 1:].contiguous())
    assert torch.allclose(loss, expected.loss, atol=1e-5)
    # the decoder, encoder and embeddings are the backbone's: the head saves nothing of them
    assert head.decoder.get_decoder() is model.backbone.get_decoder()
    every = {f"s.{n}" for n, _ in head.named_parameters(remove_duplicate=False)}
    assert every == model.tied_parameter_names()  # the lm_head too: tied to the shared embeddings


def test_encoder_decoder_fine_tuning_full_lora_partial_and_frozen_refused(encoder_decoder, titled, tmp_path):
    path = encoder_decoder[0]
    common = dict(model=str(path), tasks=[TaskSpec("title", titled, label="title", type="seq2seq")], epochs=3,
                  batch_size=8, lr=1e-2, backbone_lr=1e-2, lora_lr=1e-2, val_fraction=0.2, patience=0,
                  progress=False)  # fmt: skip
    for strategy in ("full", "lora", "partial:1"):  # partial: the bottom encoder layer and embeddings frozen
        result = train(TrainConfig(output_dir=str(tmp_path / strategy), strategy=strategy, **common))
        losses = [e["val_losses"]["title"] for e in result.metrics["epochs"]]
        assert losses[-1] < losses[0], strategy
    model, tokenizer = load_for_inference(tmp_path / "lora")
    assert isinstance(predict_texts(model, tokenizer, ["the film was good"])[0]["title"], str)
    with pytest.raises(HeadkitError, match="nothing trains"):
        train(TrainConfig(output_dir=str(tmp_path / "frozen"), strategy="frozen", **common))


def test_an_untied_lm_head_is_imported_from_the_checkpoint(tmp_path):
    path, reference, _ = save_seq2seq_checkpoint(tmp_path / "bart", "bart", tie=False)
    model = MultiHeadModel.from_pretrained(path, {"s": head_config("seq2seq")})
    lm_head = model.heads["s"].decoder.lm_head.weight
    assert (
        torch.equal(lm_head, reference.lm_head.weight)
        and "s.decoder.lm_head.weight" not in model.tied_parameter_names()
    )
