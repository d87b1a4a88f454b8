"""headkit in the Hugging Face ecosystem: models by hub id (from a local hub cache, offline),
save_pretrained / from_pretrained with heads, push_to_hub (the API mocked), model cards,
transformers.Trainer, pipelines, devices and dtypes, and the saved max_length."""

import functools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
import yaml

import headkit
from headkit import ModelNotFoundError
from headkit.backbone import resolve_model
from headkit.cli.main import main
from headkit.data.batching import collate
from headkit.data.tasks import TaskSpec, prepare
from headkit.devices import onnx_providers, pick_device, pick_dtype
from headkit.errors import HeadkitError
from headkit.model import MultiHeadModel, MultiHeadOutput
from headkit.ship.predict import load_for_inference, predict_texts
from headkit.training.recipe import TrainConfig, train

from conftest import SERVED_HEADS, sentiment_rows, write_csv


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, offline: `publish` lays a folder out in it as a hub repository."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def publish(folder, repo_id: str, commit: str = "0" * 40, ref: str = "main"):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        return repo / "snapshots" / commit

    return publish


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An online Hugging Face hub stood in for by local folders: `repos[repo_id] = folder` publishes a
    repository; `fetched` is every file downloaded into the (empty, temporary) cache, as the repository
    names it. `snapshot_download` keeps the real one's pattern matching, refs and snapshot layout."""
    import huggingface_hub
    import huggingface_hub.constants as constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = SimpleNamespace(repos={}, fetched=[], commit="f" * 40)

    def list_repo_files(repo_id, *, revision=None, **kwargs):
        root = hub.repos[repo_id]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def snapshot_download(repo_id, *, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False,
                          **kwargs):  # fmt: skip
        storage = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        snapshot = storage / "snapshots" / hub.commit
        if local_files_only:
            if not snapshot.is_dir():
                raise LocalEntryNotFoundError("not in the cache")
            return str(snapshot)
        snapshot.mkdir(parents=True, exist_ok=True)
        for name in filter_repo_objects(list_repo_files(repo_id), allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hub.repos[repo_id] / name, snapshot / name)
            hub.fetched.append(name)
        if revision != hub.commit:
            (storage / "refs").mkdir(exist_ok=True)
            (storage / "refs" / (revision or "main")).write_text(hub.commit)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    return hub


def strays(folder, *names: str) -> None:
    """Files a hub repository often holds beside the weights transformers loads, none of them needed."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not needed")


def same_weights(model, reference) -> bool:
    pairs = zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


@pytest.fixture(scope="module")
def run(tiny_text_model, tmp_path_factory):
    """A run trained by the CLI: sentiment + a regression head, max_length 32."""
    out = tmp_path_factory.mktemp("run") / "run"
    data = write_csv(out.parent / "reviews.csv", sentiment_rows(48))
    args = ["train", "--model", str(tiny_text_model), "--data", str(data), "--head", "sentiment:label",
            "--head", "score:score:regression", "--epochs", "2", "--lr", "0.05", "--max_length", "32",
            "--output_dir", str(out), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    return out


# ----------------------------------------------------------------------------- hub ids


def test_a_model_loads_by_hub_id_from_the_cache_offline(tiny_text_model, hub_cache):
    hub_cache(tiny_text_model, "tiny-org/tiny-bert")
    model = MultiHeadModel.from_pretrained(
        "tiny-org/tiny-bert", {"s": {"type": "classification", "labels": ["a", "b"]}}
    )
    assert type(model.backbone).__name__ == "BertModel" and list(model.heads) == ["s"]
    reference = headkit.load_backbone(tiny_text_model)
    pairs = zip(model.backbone.state_dict().values(), reference.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert headkit.inspect_model("tiny-org/tiny-bert").model_type == "bert"
    hub_cache(tiny_text_model, "tiny-org/tiny-bert", commit="1" * 40, ref="v2")
    assert MultiHeadModel.from_pretrained("tiny-org/tiny-bert", revision="v2").heads.keys() == set()


def test_a_hub_id_not_in_the_cache_while_offline_says_so(hub_cache, capsys):
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        MultiHeadModel.from_pretrained("nobody/nothing")
    assert main(["inspect", "nobody/nothing"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_an_older_download_missing_a_small_file_still_loads_offline(tiny_text_model, hub_cache):
    """huggingface_hub (2.x) keeps each commit's file listing and, offline, refuses a snapshot that lacks a
    file the patterns asked for: a download made before *.jinja was asked for is still what there is."""
    snapshot = hub_cache(tiny_text_model, "tiny-org/chat")
    listing = {path.relative_to(snapshot).as_posix(): {"size": 1, "blob_id": "0" * 40} for path in snapshot.iterdir()}
    listing["chat_template.jinja"] = {"size": 1, "blob_id": "1" * 40}  # on the hub, never downloaded
    trees = snapshot.parent.parent / "trees"
    trees.mkdir()
    (trees / f"{snapshot.name}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    assert same_weights(headkit.load_backbone("tiny-org/chat"), headkit.load_backbone(tiny_text_model))


def test_a_headkit_model_on_the_hub_loads_with_its_heads(run, hub_cache):
    hub_cache(run / "model", "me/sentiment")
    model = MultiHeadModel.from_pretrained("me/sentiment")
    assert set(model.heads) == {"sentiment", "score"} and model.max_length == 32


def test_a_hub_download_fetches_the_shards_the_index_names_and_no_other_weights(tiny_text_model, tmp_path, fake_hub):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_text_model, repo)
    (repo / "model.safetensors").unlink()
    reference = headkit.load_backbone(tiny_text_model)
    reference.save_pretrained(repo, max_shard_size="60KB")
    shards = sorted(set(json.loads((repo / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) >= 2
    small = sorted(p.name for p in repo.iterdir() if not p.name.endswith(".safetensors"))
    strays(repo, "model.fp16.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "onnx/model.onnx",
           "model.Q4_0.gguf", "runs/events.out.tfevents")  # fmt: skip
    fake_hub.repos["tiny-org/sharded"] = repo
    model = MultiHeadModel.from_pretrained("tiny-org/sharded", {"s": {"type": "classification", "labels": ["a", "b"]}})
    assert same_weights(model.backbone, reference)
    assert sorted(fake_hub.fetched) == sorted([*small, *shards])  # small files once, then the named shards


def test_a_repository_with_pytorch_bin_weights_only_loads(tiny_text_model, tmp_path, fake_hub):
    """transformers reads a .bin with torch.load(weights_only=True): tensors, no pickled code."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_text_model, repo)
    (repo / "model.safetensors").unlink()
    reference = headkit.load_backbone(tiny_text_model)
    torch.save(reference.state_dict(), repo / "pytorch_model.bin")  # transformers 5 writes only safetensors
    strays(repo, "tf_model.h5", "rust_model.ot")
    fake_hub.repos["old-org/bin-bert"] = repo
    assert same_weights(headkit.load_backbone("old-org/bin-bert"), reference)
    assert "pytorch_model.bin" in fake_hub.fetched and "tf_model.h5" not in fake_hub.fetched


def test_a_headkit_save_on_the_hub_fetches_its_heads_and_backbone_weights_only(saved_multihead, tmp_path, fake_hub):
    for repo_id, inside in (("me/save", ""), ("me/run", "model/")):  # a save, and a training run's folder
        repo = tmp_path / repo_id
        shutil.copytree(saved_multihead, repo / inside)
        strays(repo, "checkpoints/step-10/model.safetensors", f"{inside}backbone/model.fp16.safetensors")
        fake_hub.repos[repo_id] = repo
        fake_hub.fetched.clear()
        assert set(MultiHeadModel.from_pretrained(repo_id).heads) == set(SERVED_HEADS)
        weights = sorted(name for name in fake_hub.fetched if name.endswith(".safetensors"))
        heads = [f"{inside}heads/{name}/model.safetensors" for name in SERVED_HEADS]
        assert weights == sorted([f"{inside}backbone/model.safetensors", *heads])


def test_a_gguf_repository_fetches_the_one_file_named_after_a_colon(tmp_path, fake_hub, monkeypatch):
    import huggingface_hub.constants as constants

    repo = tmp_path / "repo"
    strays(repo, "README.md", "tiny.Q4_0.gguf", "tiny.Q8_0.gguf")
    fake_hub.repos["org/tiny-GGUF"] = repo
    source = resolve_model("org/tiny-GGUF:tiny.Q8_0.gguf")
    assert source.gguf_file == "tiny.Q8_0.gguf" and (source.path / "tiny.Q8_0.gguf").read_bytes() == b"not needed"
    assert sorted(fake_hub.fetched) == ["README.md", "tiny.Q8_0.gguf"]
    assert resolve_model("org/tiny-GGUF@v1:tiny.Q8_0.gguf").path == source.path  # a revision goes before the colon
    with pytest.raises(ModelNotFoundError, match=r"org/tiny-GGUF:tiny.Q4_0.gguf, org/tiny-GGUF:tiny.Q8_0.gguf"):
        resolve_model("org/tiny-GGUF")  # which of them? the error names each as it is spelled
    with pytest.raises(ModelNotFoundError, match=r"no file 'tiny.Q2_K.gguf'.*org/tiny-GGUF:tiny.Q4_0.gguf"):
        resolve_model("org/tiny-GGUF:tiny.Q2_K.gguf")
    assert "tiny.Q4_0.gguf" not in fake_hub.fetched
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: the cache holds the one fetched
    assert resolve_model("org/tiny-GGUF:tiny.Q8_0.gguf") == source
    with pytest.raises(ModelNotFoundError, match=r"org/tiny-GGUF:tiny.Q8_0.gguf$"):
        resolve_model("org/tiny-GGUF")


def test_an_unreachable_hub_falls_back_to_the_cached_download(tiny_text_model, fake_hub, monkeypatch):
    import huggingface_hub

    fake_hub.repos["tiny-org/tiny-bert"] = tiny_text_model
    headkit.load_backbone("tiny-org/tiny-bert")
    fetched = len(fake_hub.fetched)
    headkit.hub._snapshot.cache_clear()

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", unreachable)
    assert same_weights(headkit.load_backbone("tiny-org/tiny-bert"), headkit.load_backbone(tiny_text_model))
    assert len(fake_hub.fetched) == fetched  # nothing asked of the hub again


# ----------------------------------------------------------------------------- save, share, load


def test_a_cli_run_loads_with_from_pretrained_and_predicts_what_headkit_predict_does(run, tmp_path):
    texts = [row["text"] for row in sentiment_rows(100, seed=3)]
    model = MultiHeadModel.from_pretrained(run).eval()  # the run directory, as the CLI wrote it
    assert set(model.heads) == {"sentiment", "score"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(run / "model" / "backbone")
    ours = [p["sentiment"]["label"] for p in predict_texts(model, tokenizer, texts)]
    write_csv(tmp_path / "in.csv", [{"text": t} for t in texts])
    assert main(["predict", str(run), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "p.jsonl")]) == 0
    cli = [json.loads(line)["sentiment"]["label"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert ours == cli and len(cli) == 100


def test_save_pretrained_round_trips_heads_processor_and_card(run, tmp_path):
    model = MultiHeadModel.from_pretrained(run)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "backbone" / "tokenizer_config.json").is_file()  # the processor came along
    again = MultiHeadModel.from_pretrained(tmp_path / "saved")
    assert set(again.heads) == {"sentiment", "score"} and again.max_length == 32
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_every_save_writes_a_model_card_with_metadata(run):
    card = (run / "model" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "headkit" and "text-classification" in front["tags"]
    assert "| sentiment | classification | -1 | neg, pos |" in card
    assert "strategy: frozen" in card and "max_length" in card and "| sentiment | accuracy |" in card
    assert "MultiHeadModel.from_pretrained" in card
    assert "transformers.AutoModelForSequenceClassification" in card  # the export a single head has


def test_push_to_hub_uploads_what_from_pretrained_reads(run, tmp_path, monkeypatch, hub_cache):
    import huggingface_hub

    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        uploaded["created"] = repo_id
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")  # what HfApi.create_repo returns

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        uploaded["repo"] = repo_id
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="m", commit_description="",
            oid="abc", pr_url=None,
        )  # fmt: skip

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = MultiHeadModel.from_pretrained(run).push_to_hub("me/reviews")
    assert uploaded == {"created": "me/reviews", "repo": "me/reviews"} and url.endswith("/commit/abc")
    card = (tmp_path / "uploaded" / "README.md").read_text()
    assert "# reviews" in card
    assert "strategy: frozen" in card and "| sentiment | accuracy |" in card  # the run's facts, kept by the save
    hub_cache(tmp_path / "uploaded", "me/reviews")  # what a user downloads is what was uploaded
    pulled = MultiHeadModel.from_pretrained("me/reviews")
    assert set(pulled.heads) == {"sentiment", "score"} and pulled.training_facts["strategy"] == "frozen"


def test_training_starts_from_the_backbone_of_a_headkit_save(run, tmp_path):
    """A run as --model gives its backbone: its heads are not trained again (continued pretraining)."""
    data = write_csv(tmp_path / "d.csv", sentiment_rows(24))
    config = TrainConfig(model=str(run), data=str(data), head=["mood:label"], epochs=1, output_dir=str(tmp_path / "r"),
                         progress=False)  # fmt: skip
    assert set(train(config).model.heads) == {"mood"}


# ----------------------------------------------------------------------------- the saved max_length


def test_the_trained_max_length_is_predicts_default(run, capsys):
    model, tokenizer = load_for_inference(run)
    assert model.max_length == 32
    long_text = " ".join(["the film was very good"] * 10)  # 50 words > 32 tokens, < the model's 64
    assert predict_texts(model, tokenizer, [long_text])[0].get("truncated") is True
    assert "truncated" not in predict_texts(model, tokenizer, [long_text], max_length=64)[0]


# ----------------------------------------------------------------------------- Trainer and pipelines


def test_multihead_output_is_a_model_output():
    out = MultiHeadOutput(loss=torch.tensor(1.0), outputs={"a": torch.zeros(1)})
    assert isinstance(out, transformers.utils.ModelOutput) and out["loss"] == 1.0 and out.losses == {}


def test_transformers_trainer_trains_a_multihead_model(tiny_text_model, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_text_model)
    data = write_csv(tmp_path / "d.csv", sentiment_rows(48))
    prepared = prepare([TaskSpec("sentiment", str(data)), TaskSpec("score", str(data), "score", type="regression")],
                       tokenizer, 64, 0.25)  # fmt: skip
    torch.manual_seed(0)
    model = MultiHeadModel.on_backbone(tiny_text_model, prepared.heads)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "t"), num_train_epochs=6, per_device_train_batch_size=8, learning_rate=2e-3,
        save_strategy="no", report_to=[], logging_steps=1, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    collator = functools.partial(collate, pad_id=0, head_types=prepared.head_types, widths=prepared.widths)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=prepared.train, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learned
    model.save_pretrained(tmp_path / "saved", processor=tokenizer)
    again = MultiHeadModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.heads["sentiment"].classifier[-1].weight, model.heads["sentiment"].classifier[-1].weight)


def test_transformers_trainer_with_the_models_own_dataset_and_collator(tiny_text_model, tmp_path):
    """No internal imports: model.encode_dataset gives Trainer a dataset, model.data_collator() its batches."""
    rows = sentiment_rows(48)
    heads = {"sentiment": headkit.head_config("classification", labels=["neg", "pos"]),
             "score": headkit.head_config("regression", labels=["score"])}  # fmt: skip
    torch.manual_seed(0)
    model = MultiHeadModel.from_pretrained(tiny_text_model, heads)
    train_data = model.encode_dataset(rows)  # labels from the columns named like the heads
    assert len(train_data) == 48 and train_data[0]["labels"]["sentiment"] in (0, 1)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "t"), num_train_epochs=6, per_device_train_batch_size=8, learning_rate=2e-3,
        save_strategy="no", report_to=[], logging_steps=1, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train_data, data_collator=model.data_collator()
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learned
    scores = model.evaluate(rows)  # the same columns, scored
    assert set(scores) == {"sentiment", "score"} and scores.num_examples == 48
    with pytest.raises(headkit.DataError, match="column 'label' not found"):
        model.encode_dataset([{"text": "good", "mood": "pos"}], heads={"sentiment": "label"})


def test_pipeline_answers_like_transformers_pipelines(run, saved_multihead):
    classify = headkit.pipeline(run, device="cpu")
    one = classify("a very good film")
    assert set(one) == {"sentiment", "score"} and set(one["sentiment"]) == {"label", "score"}
    assert one["sentiment"]["label"] in ("neg", "pos") and 0.5 <= one["sentiment"]["score"] <= 1.0
    assert len(classify(["a", "b c"])) == 2
    model, _ = load_for_inference(saved_multihead)
    tags = model.heads["tags"]
    words = [{"word": "Alice", "tag": "B-PER", "start": 0, "end": 5},
             {"word": "visited", "tag": "O", "start": 6, "end": 13},
             {"word": "New", "tag": "B-LOC", "start": 14, "end": 17},
             {"word": "York", "tag": "I-LOC", "start": 18, "end": 22}]  # fmt: skip
    assert tags.view.pipeline_output(words) == [
        {"entity_group": "PER", "word": "Alice", "start": 0, "end": 5},
        {"entity_group": "LOC", "word": "New York", "start": 14, "end": 22},
    ]
    multi = headkit.pipeline(saved_multihead, device="cpu")("alice visited paris")
    assert set(multi) == set(SERVED_HEADS) and isinstance(multi["genres"], list)


# ----------------------------------------------------------------------------- devices


def test_device_and_dtype_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type in ("cpu", "mps") and pick_device("cpu").type == "cpu"
    with pytest.raises(HeadkitError, match="no CUDA device"):
        pick_device("cuda")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(HeadkitError, match="float16 runs on GPUs"):
        pick_dtype("float16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert pick_device("auto").type == "cuda" and pick_dtype("auto", torch.device("cuda")) == torch.float16


def test_onnx_uses_the_cuda_provider_when_there_is_one(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers(torch.device("cuda"))[0] == "CUDAExecutionProvider"
    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers(torch.device("cuda")) == ["CPUExecutionProvider"]


def test_cli_device_and_dtype_flags(run, capsys):
    assert main(["predict", str(run), "--text", "good film", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    assert "sentiment:" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert main(["predict", str(run), "--text", "good", "--device", "cuda"]) == 1  # the machine, not the flag
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(run.parent / "reviews.csv"), "--device", "cpu"]) == 0


def test_a_sentence_transformers_model_loaded_by_hub_id_keeps_its_pooling(tiny_text_model, hub_cache, tmp_path):
    """`auto` pooling reads modules.json from the hub cache when the backbone names a hub id."""
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_text_model, folder)
    (folder / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    hub_cache(folder, "acme/st-bert")
    backbone = transformers.AutoModel.from_pretrained("acme/st-bert")  # name_or_path is the hub id
    assert MultiHeadModel(backbone).adapter.default_pooling == "mean"
    assert MultiHeadModel.on_backbone("acme/st-bert").adapter.default_pooling == "mean"


# ----------------------------------------------------------------------------- transformers conventions (issue 36)


def test_model_config_describes_the_model_and_is_saved_as_config_json(run, tmp_path):
    model = MultiHeadModel.from_pretrained(run)
    config = model.config
    assert isinstance(config, headkit.MultiHeadConfig)
    assert set(config.heads) == {"sentiment", "score"} and config.heads["sentiment"]["labels"] == ["neg", "pos"]
    assert (config.model_type, config.hidden_size, config.max_length) == ("bert", 32, 32)
    model.columns = {"sentiment": {"label": "label", "text": "text", "text_pair": None}}
    model.save_pretrained(tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert written["format"] == "headkit.model" and written["heads"] == config.heads
    assert headkit.MultiHeadConfig.from_pretrained(tmp_path / "saved") == model.config
    assert MultiHeadModel.from_pretrained(tmp_path / "saved").columns == model.columns  # evaluate's defaults
    model.config.heads.clear()  # a snapshot: changing it changes no model
    assert set(model.heads) == {"sentiment", "score"}


def test_save_pretrained_keeps_the_tokenizer_and_pushes_with_the_hub_mixins_options(run, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["private"] = kwargs.get("private")
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        calls.update(repo=repo_id, branch=kwargs.get("revision"), files=files,
                     card=(Path(folder_path) / "README.md").read_text())  # fmt: skip
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="m",
                                          commit_description="", oid="1", pr_url=None)  # fmt: skip

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = MultiHeadModel.from_pretrained(run)
    url = model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="me/heads", private=True, branch="dev")
    assert url.endswith("/commit/1") and calls["repo"] == "me/heads" and calls["branch"] == "dev" and calls["private"]
    assert {"config.json", "heads.json", "backbone", "README.md"} <= set(calls["files"])
    assert (tmp_path / "local" / "backbone" / "tokenizer_config.json").is_file()  # the tokenizer, by default
    assert 'from_pretrained("me/heads")' in calls["card"]  # the card's loading snippet names the repository


def test_from_pretrained_takes_transformers_loading_options(run, fake_hub, tmp_path):
    fake_hub.repos["me/reviews"] = Path(run) / "model"
    seen = {}
    real = huggingface_hub_list_files = __import__("huggingface_hub").list_repo_files

    def listing(repo_id, **kwargs):
        seen["token"] = kwargs.get("token")
        return real(repo_id, **kwargs)

    import huggingface_hub

    huggingface_hub.list_repo_files = listing
    try:
        model = MultiHeadModel.from_pretrained("me/reviews", token="hf_secret", dtype="bfloat16", device_map="cpu")
    finally:
        huggingface_hub.list_repo_files = huggingface_hub_list_files
    assert seen["token"] == "hf_secret" and model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert set(model.heads) == {"sentiment", "score"} and not model.training
    with pytest.raises(HeadkitError, match="dtype 'half'"):
        MultiHeadModel.from_pretrained(run, dtype="half")


def test_headkit_load_takes_hub_ids_and_refuses_plain_checkpoints(run, hub_cache, tiny_text_model, tmp_path):
    MultiHeadModel.from_pretrained(run).save_pretrained(tmp_path / "saved")  # with its config.json
    hub_cache(tmp_path / "saved", "me/reviews")
    assert set(headkit.MultiHeadConfig.from_pretrained("me/reviews").heads) == {"sentiment", "score"}
    assert set(headkit.load("me/reviews").heads) == {"sentiment", "score"}
    with pytest.raises(headkit.CheckpointError, match="not a headkit save"):
        headkit.load(tiny_text_model)


def test_gradient_checkpointing_enable_recomputes_the_backbone(run):
    model = MultiHeadModel.from_pretrained(run).train()
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    tokenizer = headkit.load_processor(Path(run) / "model" / "backbone")
    batch = tokenizer(["good film", "bad plot"], padding=True, return_tensors="pt")
    out = model(**batch, labels={"sentiment": torch.tensor([1, 0])})
    out.loss.backward()
    assert model.backbone.embeddings.word_embeddings.weight.grad is not None
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_importing_headkit_logs_warnings_only(capsys):
    import logging

    logger = logging.getLogger("headkit")
    assert logger.getEffectiveLevel() == logging.WARNING  # as transformers: notes appear when asked
    logging.getLogger("headkit.training.loop").info("phase 'heads': a note")
    logging.getLogger("headkit.training.loop").warning("a problem")
    err = capsys.readouterr().err
    assert "a note" not in err and "a problem" in err
    headkit.set_verbosity_info()
    try:
        logging.getLogger("headkit.training.loop").info("now shown")
        assert "now shown" in capsys.readouterr().err
    finally:
        headkit.set_verbosity_warning()


def test_a_cli_run_records_the_columns_its_heads_read(tiny_text_model, tmp_path):
    """config.json is in every full save (a run's model/ too), so evaluate knows each head's columns."""
    rows = [{"review": r["text"], "polarity": r["label"]} for r in sentiment_rows(24)]
    data = write_csv(tmp_path / "d.csv", rows)
    args = ["train", "--model", str(tiny_text_model), "--data", str(data), "--text_column", "review",
            "--head", "sentiment:polarity", "--epochs", "1", "--output_dir", str(tmp_path / "run"),
            "--no_progress"]  # fmt: skip
    assert main(args) == 0
    config = headkit.MultiHeadConfig.from_pretrained(tmp_path / "run")
    assert config.columns == {"sentiment": {"label": "polarity", "text": "review", "text_pair": None}}
    model = MultiHeadModel.from_pretrained(tmp_path / "run")
    assert model.evaluate(rows).num_examples == 24  # no columns named: the recorded ones
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data), "--text_column", "review"]) == 0  # the label


def test_device_map_spellings_and_a_local_folder_ignores_revision(run):
    model = MultiHeadModel.from_pretrained(run, revision="main", device_map={"": "cpu"})  # a folder has no revisions
    assert model.device.type == "cpu" and set(model.heads) == {"sentiment", "score"}
    with pytest.raises(HeadkitError, match="splits the model"):
        MultiHeadModel.from_pretrained(run, device_map={"backbone": 0, "heads": 1})
    if not torch.cuda.is_available():
        with pytest.raises(HeadkitError, match=r"device_map 'cuda:0'.*no CUDA device"):
            MultiHeadModel.from_pretrained(run, device_map=0)


def test_pipeline_of_a_model_object_keeps_its_dtype_and_evaluate_skips_a_dicts_train_split(run):
    model = MultiHeadModel.from_pretrained(run, dtype=torch.bfloat16)
    headkit.pipeline(model, device="cpu")
    assert model.dtype == torch.bfloat16  # moved where asked, never recast behind the caller's back
    import datasets

    rows = sentiment_rows(12)
    split = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows * 3), "test": datasets.Dataset.from_list(rows)}
    )
    assert model.evaluate(split).num_examples == 12  # the test split, not the 36 training rows
    with pytest.raises(headkit.DataError, match="has the splits \\['train'\\] and no 'test' or 'validation'"):
        model.evaluate(datasets.DatasetDict({"train": split["train"]}))
