"""A LoRA model's save holds its adapter and the name of its base model, not a copy of the base:
backbone/ keeps the base's config and tokenizer, heads.json (and peft's adapter_config.json)
name the base and its revision, and loading fetches the base by that name, checks it is the one
the adapter was trained on, and applies the adapter. A base that cannot be named is copied as
before; saves made before (base weights in backbone/) still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

import headkit
from headkit import CheckpointError, FingerprintMismatchError, MultiHeadModel, head_config
from headkit.backbone.load import reference
from headkit.ship.load import base_checkpoint
from headkit.ship.save import ADAPTER_DIR, BACKBONE_DIR, save_heads
from headkit.training.strategies import apply_lora

from conftest import WORDS, tiny_config

TEXTS = ["the film was very good", "a dull and boring plot", "alice met bob in paris"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over the test words, with a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


def make_base(path: Path, kind: str, seed: int = 0) -> Path:
    """A tiny random BERT, or a Llama whose output embeddings are not tied to its input ones,
    saved with its tokenizer."""
    tokenizer = word_tokenizer()
    tokenizer.save_pretrained(path)
    config = tiny_config(kind)
    config.vocab_size = len(tokenizer)
    if kind == "llama":
        config.tie_word_embeddings = False
    torch.manual_seed(seed)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    return path


HEADS = {
    "bert": {"sentiment": head_config("classification", labels=["neg", "pos"], pooling="mean")},
    "llama": {
        "sentiment": head_config("classification", labels=["neg", "pos"], pooling="last"),
        "lm": head_config("causal-lm"),  # untied: its own output matrix, saved with the heads
    },
}


@pytest.fixture(params=["bert", "llama"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def base(kind, tmp_path) -> Path:
    return make_base(tmp_path / f"base-{kind}", kind)


def batch(model: MultiHeadModel) -> dict[str, torch.Tensor]:
    return dict(model._processor()(TEXTS, padding=True, return_tensors="pt"))


def outputs(model: MultiHeadModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(**batch(model)).outputs


def train_one_step(model: MultiHeadModel) -> MultiHeadModel:
    """One optimiser step on every trainable weight (adapter and heads), large enough to show."""
    model.train()
    inputs = batch(model)
    labels = {"sentiment": torch.tensor([1, 0, 1])}
    if "lm" in model.heads:
        labels["lm"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    model(**inputs, labels=labels).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    return model.eval()


def lora_model(base: Path, kind: str, **lora) -> MultiHeadModel:
    model = MultiHeadModel.from_pretrained(base, HEADS[kind])
    model.backbone = apply_lora(model.backbone, r=4, dropout=0.0, **lora)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # peft starts B at zero: the adapter would change nothing yet
    return train_one_step(model)


def size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def weight_files(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))


def legacy_save(model: MultiHeadModel, directory: Path, tokenizer) -> Path:
    """A LoRA save as headkit wrote it before LoRA saves named their base (the code of that
    commit's ship/save.py `_save_backbone`): the clean base weights in backbone/, no "base"."""
    backbone = model.backbone
    base = backbone.get_base_model()
    clean = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(directory / BACKBONE_DIR, state_dict=clean, safe_serialization=True)
    backbone.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    tokenizer.save_pretrained(directory / BACKBONE_DIR)
    save_heads(model, directory)
    return directory


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name  # bit-exact in fp32


def test_a_lora_save_holds_the_adapter_and_names_its_base(kind, base, tmp_path):
    model = lora_model(base, kind)
    expected = outputs(model)
    headkit.save(model, tmp_path / "save")  # no processor given: the model's own is kept
    save = tmp_path / "save"

    assert weight_files(save / BACKBONE_DIR) == []  # the base's config and tokenizer only
    assert {"config.json", "tokenizer.json"} <= {f.name for f in (save / BACKBONE_DIR).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.name for f in (save / ADAPTER_DIR).iterdir()}
    named = json.loads((save / "heads.json").read_text())["backbone"]["base"]
    assert named["name_or_path"] == str(base.resolve()) and named["revision"] is None
    assert named["model_type"] == kind and len(named["weights_sample_sha256"]) == 64
    adapter = json.loads((save / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base.resolve()) and adapter["revision"] is None  # as peft names it

    full = legacy_save(model, tmp_path / "full", model._processor())
    base_bytes = size(base) - sum(f.stat().st_size for f in base.iterdir() if not f.name.endswith(WEIGHT_SUFFIXES))
    assert size(save) < size(full) - 0.9 * base_bytes  # the base's weights are what is left out

    for loaded in (headkit.load(save), MultiHeadModel.from_pretrained(save)):
        assert type(loaded.backbone).__name__ == "PeftModel"
        assert_same(outputs(loaded), expected)
    assert base_checkpoint(save) == base.resolve()  # where a causal-LM class reads the base's weights
    merged = headkit.load_backbone(save)  # a plain backbone to build on: the adapter merged in
    assert (
        not hasattr(merged, "peft_config") and type(merged).__name__ == type(model.backbone.get_base_model()).__name__
    )


def test_a_reloaded_lora_model_saved_again_still_names_the_original_base(tmp_path):
    base = make_base(tmp_path / "base", "bert")
    model = lora_model(base, "bert")
    expected = outputs(model)
    headkit.save(model, tmp_path / "save")
    loaded = headkit.load(tmp_path / "save")
    headkit.save(loaded, tmp_path / "save")  # over itself: it must not name its own (replaced) backbone/
    headkit.save(loaded, tmp_path / "again")
    for directory in ("save", "again"):
        named = json.loads((tmp_path / directory / "heads.json").read_text())["backbone"]["base"]
        assert named["name_or_path"] == str(base.resolve()), directory
        assert weight_files(tmp_path / directory / BACKBONE_DIR) == []
        assert_same(outputs(headkit.load(tmp_path / directory)), expected)


def test_a_moved_base_is_a_clear_error(tmp_path):
    base = make_base(tmp_path / "base", "bert")
    headkit.save(lora_model(base, "bert"), tmp_path / "save")
    base.rename(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"LoRA save.*not a copy of the base model.*base.*could not be loaded"):
        headkit.load(tmp_path / "save")


def test_a_changed_base_is_refused_naming_both(tmp_path):
    base = make_base(tmp_path / "base", "bert")
    headkit.save(lora_model(base, "bert"), tmp_path / "save")
    shutil.rmtree(base)
    make_base(base, "bert", seed=5)  # the same architecture under the same name, other weights
    with pytest.raises(FingerprintMismatchError) as error:
        headkit.load(tmp_path / "save")
    message = str(error.value)
    assert f"trained on {base.resolve()} (bert)" in message and f"from {base.resolve()}" in message
    assert "tensors differ" in message and "embeddings.word_embeddings.weight" in message


def test_a_base_that_cannot_be_named_is_saved_in_full_with_a_warning(tmp_path, caplog, capsys):
    """Case (a): a backbone built in memory from a config (no name_or_path) has no checkpoint to
    fetch again, nor has a base changed after loading: their weights go to backbone/ as before."""
    tokenizer = word_tokenizer()
    config = tiny_config("bert")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = MultiHeadModel(transformers.BertModel(config), HEADS["bert"], processor=tokenizer)
    model.backbone = apply_lora(model.backbone, r=4, dropout=0.0)
    model = train_one_step(model)
    expected = outputs(model)
    with caplog.at_level("WARNING", logger="headkit"):
        headkit.save(model, tmp_path / "memory")
    assert "saved in full beside the adapter because it was built in memory" in caplog.text + capsys.readouterr().err
    assert weight_files(tmp_path / "memory" / BACKBONE_DIR) == ["model.safetensors"]
    assert "base" not in json.loads((tmp_path / "memory" / "heads.json").read_text())["backbone"]
    assert_same(outputs(headkit.load(tmp_path / "memory")), expected)

    base = make_base(tmp_path / "base", "bert")
    changed = MultiHeadModel.from_pretrained(base, HEADS["bert"])
    with torch.no_grad():
        changed.backbone.embeddings.word_embeddings.weight.add_(0.5)  # tuned before LoRA wrapped it
    changed.backbone = apply_lora(changed.backbone, r=4, dropout=0.0)
    expected = outputs(changed)
    with caplog.at_level("WARNING", logger="headkit"):
        headkit.save(changed, tmp_path / "changed")
    assert f"its weights changed since they were loaded from {base.resolve()}" in caplog.text + capsys.readouterr().err
    assert weight_files(tmp_path / "changed" / BACKBONE_DIR) == ["model.safetensors"]
    assert_same(outputs(headkit.load(tmp_path / "changed")), expected)


def test_a_base_path_gone_at_save_time_is_saved_in_full(tmp_path, caplog, capsys):
    base = make_base(tmp_path / "base", "bert")
    torch.manual_seed(0)
    backbone = transformers.AutoModel.from_pretrained(base)  # loaded outside headkit: named by name_or_path
    model = MultiHeadModel(backbone, HEADS["bert"], processor=word_tokenizer())
    model.backbone = apply_lora(model.backbone, r=4, dropout=0.0)
    shutil.rmtree(base)
    with caplog.at_level("WARNING", logger="headkit"):
        headkit.save(model, tmp_path / "save")
    assert "names no checkpoint that exists" in caplog.text + capsys.readouterr().err
    assert weight_files(tmp_path / "save" / BACKBONE_DIR) == ["model.safetensors"]
    assert_same(outputs(headkit.load(tmp_path / "save")), outputs(model))


def test_a_lora_save_made_before_bases_were_named_still_loads(tmp_path):
    """Case (c): the layout every LoRA save had until now, written by that code."""
    base = make_base(tmp_path / "base", "bert")
    model = lora_model(base, "bert")
    expected = outputs(model)
    old = legacy_save(model, tmp_path / "old", model._processor())
    assert weight_files(old / BACKBONE_DIR) == ["model.safetensors"]
    assert "base" not in json.loads((old / "heads.json").read_text())["backbone"]
    shutil.rmtree(base)  # it carries its base: nothing is fetched
    assert base_checkpoint(old) == old / BACKBONE_DIR
    assert_same(outputs(headkit.load(old)), expected)
    merged = headkit.load_backbone(old)
    assert not hasattr(merged, "peft_config")


def test_modules_to_save_and_trained_token_embeddings_travel_in_the_adapter(tmp_path):
    """Case (b): what peft trains beside LoRA's matrices (a whole module, rows of the embeddings)
    is in peft's adapter file, so the save still needs only the base's name."""
    base = make_base(tmp_path / "base", "bert")
    model = MultiHeadModel.from_pretrained(
        base, {"cls": head_config("classification", labels=["a", "b"], pooling="pooler")}
    )
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4,
        target_modules=["query", "value"],
        modules_to_save=["pooler"],
        trainable_token_indices={"word_embeddings": [5, 6]},
    )
    model.backbone = get_peft_model(model.backbone, config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "modules_to_save" in name or "trainable_tokens_delta" in name or "lora_B" in name:
                p.normal_(0, 0.3)
    expected = outputs(model)
    headkit.save(model, tmp_path / "save")
    assert weight_files(tmp_path / "save" / BACKBONE_DIR) == []
    with safe_open(tmp_path / "save" / ADAPTER_DIR / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert any("pooler.dense" in k for k in keys) and any("trainable_tokens_delta" in k for k in keys)
    assert_same(outputs(headkit.load(tmp_path / "save")), expected)


def test_a_merged_lora_model_is_a_plain_backbone_and_saves_in_full(tmp_path):
    """Case (d): after merge_and_unload the base weights are the trained ones; no adapter is left."""
    base = make_base(tmp_path / "base", "bert")
    model = lora_model(base, "bert")
    model.backbone = model.backbone.merge_and_unload()
    expected = outputs(model)
    headkit.save(model, tmp_path / "save")
    assert weight_files(tmp_path / "save" / BACKBONE_DIR) == ["model.safetensors"]
    assert not (tmp_path / "save" / ADAPTER_DIR).exists()
    assert "base" not in json.loads((tmp_path / "save" / "heads.json").read_text())["backbone"]
    assert_same(outputs(headkit.load(tmp_path / "save")), expected)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face hub cache; `publish` lays a folder out in it as a repository commit."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def publish(folder: Path, repo_id: str, commit: str) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return repo / "snapshots" / commit

    return publish


def test_a_hub_base_is_named_by_its_id_and_pinned_to_its_commit(tmp_path, hub_cache):
    hub_cache(make_base(tmp_path / "v1", "bert"), "tiny-org/tiny-bert", "1" * 40)
    model = lora_model("tiny-org/tiny-bert", "bert")
    expected = outputs(model)
    headkit.save(model, tmp_path / "save")
    named = json.loads((tmp_path / "save" / "heads.json").read_text())["backbone"]["base"]
    assert (named["name_or_path"], named["revision"]) == ("tiny-org/tiny-bert", "1" * 40)
    adapter = json.loads((tmp_path / "save" / ADAPTER_DIR / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("tiny-org/tiny-bert", "1" * 40)
    hub_cache(make_base(tmp_path / "v2", "bert", seed=7), "tiny-org/tiny-bert", "2" * 40)  # main moves on
    assert_same(outputs(headkit.load(tmp_path / "save")), expected)  # the commit it was trained on


def test_reference_names_what_can_be_loaded_again(tmp_path):
    base = make_base(tmp_path / "base", "bert")
    assert reference("minilm") == {"name_or_path": "minilm", "revision": None}
    assert reference(base) == {"name_or_path": str(base.resolve()), "revision": None}
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / ("a" * 40)
    shutil.copytree(base, snapshot)
    assert reference(snapshot) == {"name_or_path": "org/name", "revision": "a" * 40}
    assert reference("org/name", snapshot) == {"name_or_path": "org/name", "revision": "a" * 40}
    assert reference(tmp_path / "missing") is None and reference("") is None
    model = MultiHeadModel.from_pretrained(base, HEADS["bert"])
    headkit.save(model, tmp_path / "save")
    assert reference(tmp_path / "save") is None  # a save's backbone lives only in that save
    assert reference(tmp_path / "save" / BACKBONE_DIR) is None


def test_save_keeps_the_models_tokenizer_by_default(tmp_path):
    base = make_base(tmp_path / "base", "bert")
    model = MultiHeadModel.from_pretrained(base, HEADS["bert"])
    headkit.save(model, tmp_path / "save")  # no processor= given
    saved = headkit.load_processor(tmp_path / "save" / BACKBONE_DIR)
    assert saved(TEXTS)["input_ids"] == word_tokenizer()(TEXTS)["input_ids"]
    assert_same(outputs(headkit.load(tmp_path / "save")), outputs(model))


def test_a_manifest_rewritten_by_save_heads_finds_the_base_through_peft_s_adapter_config(tmp_path):
    """save_heads over a full save writes a manifest without "base": the adapter's config still
    names it (peft's convention); a save naming no base at all is refused as incomplete."""
    base = make_base(tmp_path / "base", "bert")
    model = lora_model(base, "bert")
    expected = outputs(model)
    headkit.save(model, tmp_path / "save")
    save_heads(model, tmp_path / "save")
    assert "base" not in json.loads((tmp_path / "save" / "heads.json").read_text())["backbone"]
    assert_same(outputs(headkit.load(tmp_path / "save")), expected)
    config = tmp_path / "save" / ADAPTER_DIR / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": None}))
    with pytest.raises(CheckpointError, match=r"names no base model for them.*the save is incomplete"):
        headkit.load(tmp_path / "save")
