"""Tiny randomly initialised models, saved to temporary directories, for fast offline tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import atexit
import shutil
import tempfile

os.environ["HEADKIT_CACHE"] = tempfile.mkdtemp(prefix="headkit-test-cache-")  # never the user's cache

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

# removed when the process ends (each xdist worker has its own): runs left hundreds of MB each behind
atexit.register(shutil.rmtree, os.environ["HEADKIT_CACHE"], ignore_errors=True)

# One part of it is shared: a GGUF model (the shipped SmolLM2) is dequantised on first use (~25 s)
# into HEADKIT_CACHE/dequantised, a pure function of the GGUF file, so that folder is one for every
# process of a test session. The first pytest process (under xdist, the controller) makes it; the
# workers it starts later inherit the variable; headkit's file lock has one process dequantise.
if "HEADKIT_TEST_DEQUANTISED" not in os.environ:
    os.environ["HEADKIT_TEST_DEQUANTISED"] = tempfile.mkdtemp(prefix="headkit-test-dequantised-")
    atexit.register(shutil.rmtree, os.environ["HEADKIT_TEST_DEQUANTISED"], ignore_errors=True)
os.symlink(os.environ["HEADKIT_TEST_DEQUANTISED"], os.path.join(os.environ["HEADKIT_CACHE"], "dequantised"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n N`, scripts/test.sh), each of the N workers gets cores // N threads,
    and so does every process a test starts (OMP_NUM_THREADS, unless already set): torch would
    otherwise start a thread per core in each worker, and N workers x cores threads spin-wait for
    each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(max(1, cores // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which runs without it too
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup` (scripts/test.sh): a test module that defines a module-scoped fixture (a
    trained run, a torchrun pair, an exported model) goes to one worker as a whole, since spread
    over two, each worker would build the fixture again; every other test is handed out alone, so
    that the long independent ones (examples, ONNX cells) balance the workers. xdist's own
    loadgroup reads `xdist_group` marks by rewriting node ids, which pytest 9.2 no longer allows;
    a node id that carries an `@group` is still grouped by it."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    root = config.rootpath
    shares = {}

    def shares_a_module_fixture(path: str) -> bool:
        if path not in shares:
            try:
                shares[path] = 'scope="module"' in (root / path).read_text(encoding="utf-8")
            except OSError:
                shares[path] = False
        return shares[path]

    class ByModuleWhereShared(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if "@" not in nodeid and shares_a_module_fixture(path):
                return path
            return super()._split_scope(nodeid)

    return ByModuleWhereShared(config, log)


VOCAB = 100
TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_config(kind: str) -> transformers.PretrainedConfig:
    """A config small enough that a model builds in milliseconds."""
    if kind == "bert":
        return transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **TEXT)
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    if kind == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB, max_position_embeddings=64, num_key_value_heads=1, tie_word_embeddings=True, **TEXT
        )
    if kind == "vit":
        return transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, **TEXT)
    if kind == "wav2vec2":
        return transformers.Wav2Vec2Config(
            vocab_size=12,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            **TEXT,
        )
    raise ValueError(kind)


ARCHITECTURES = {
    # class name: config kind
    "BertModel": "bert",
    "BertForMaskedLM": "bert",
    "BertForSequenceClassification": "bert",
    "BertForTokenClassification": "bert",
    "BertForQuestionAnswering": "bert",
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "Wav2Vec2ForCTC": "wav2vec2",
    "ViTForImageClassification": "vit",
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: class name -> directory holding a saved tiny random model of that class."""
    made: dict[str, Path] = {}

    def make(architecture: str) -> Path:
        if architecture not in made:
            torch.manual_seed(0)
            model = getattr(transformers, architecture)(tiny_config(ARCHITECTURES[architecture]))
            path = tmp_path_factory.mktemp(architecture)
            model.save_pretrained(path)
            made[architecture] = path
        return made[architecture]

    return make


@pytest.fixture
def bert_backbone():
    torch.manual_seed(0)
    return transformers.BertModel(tiny_config("bert")).eval()


def text_batch(batch: int = 4, length: int = 7, pad_last: int = 2) -> dict[str, torch.Tensor]:
    """Random token ids with the last `pad_last` positions of the final example padded."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        attention_mask[-1, -pad_last:] = 0
        input_ids[-1, -pad_last:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture
def notes_shown():
    """The library's notes on stderr: logger "headkit" at INFO (its default is WARNING, as transformers')."""
    import headkit

    headkit.set_verbosity_info()
    yield
    headkit.set_verbosity_warning()


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
FILLER = ["the", "film", "plot", "was", "very", "a", "movie", "and", "acting", "story"]
WORDS = POSITIVE + NEGATIVE + FILLER + ["paris", "london", "alice", "bob", "visited", "met"]


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    """A tiny random BERT with a real WordPiece tokenizer over a small vocabulary, saved to disk."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = tiny_config("bert")
    config.vocab_size = len(vocab)
    transformers.BertModel(config).save_pretrained(path)
    return path


def sentiment_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """A learnable toy sentiment task: the label is carried by one sentiment word."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        filler = rng.sample(FILLER, 4)
        rows.append({"text": " ".join([*filler[:2], word, *filler[2:]]), "label": label, "score": str(i % 5)})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


SERVED_HEADS = {
    "sentiment": {"type": "classification", "labels": ["neg", "pos"], "pooling": "pooler"},
    "stars": {"type": "regression", "labels": ["stars"], "pooling": "pooler"},
    "genres": {"type": "multilabel", "labels": ["drama", "comedy", "crime"], "pooling": "pooler"},
    "tags": {"type": "token-classification", "labels": ["O", "B-LOC", "I-LOC", "B-PER"]},
    "answer": {"type": "span"},
    "mlm": {"type": "masked-lm", "vocab_size": 0},
    "topic": {"type": "classification", "labels": ["a", "b", "c"], "pooling": "mean"},
}


@pytest.fixture(scope="session")
def saved_multihead(tiny_text_model, tmp_path_factory) -> Path:
    """A full headkit save: the tiny BERT with one head of every text type (random weights)."""
    import headkit

    torch.manual_seed(0)
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=SERVED_HEADS)
    for p in model.heads.parameters():  # larger weights than the init, so differences would show
        torch.nn.init.normal_(p, std=0.5) if p.dim() > 1 else None
    path = tmp_path_factory.mktemp("saved") / "model"
    headkit.save(model, path, processor=headkit.load_processor(tiny_text_model))
    return path


def save_decoder(directory: Path, kind: str) -> Path:
    """A tiny random decoder with a word-level tokenizer that, like GPT-2's, has an eos but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(["<unk>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(directory)
    config = tiny_config(kind)
    config.vocab_size = len(vocab)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------- chat models (sft)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<eos>", "<|im_start|>", "<|im_end|>"]


def chat_tokenizer(template: str | None = CHATML, eos: bool = True) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over the test words with ChatML's markers (or no template at all)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate([*SPECIAL, "system", "user", "assistant", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<eos>" if eos else None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = template
    return tokenizer


def save_chat_model(path: Path) -> Path:
    """A tiny random Llama with the chat tokenizer above: something to instruction-tune."""
    tokenizer = chat_tokenizer()
    tokenizer.save_pretrained(path)
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def reply_rows(n: int = 48) -> list[dict]:
    """Review -> one word that says its sentiment (learnable by a tiny model in a few epochs)."""
    return [{"prompt": r["text"], "response": "superb" if r["label"] == "pos" else "awful"} for r in sentiment_rows(n)]


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds `tensor`'s data (read from /proc/self/maps, Linux), or None
    for anonymous memory (RAM): tells a disk-backed store from one held in memory."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 and fields[5].startswith("/") else None
    return None


needs_proc_maps = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
