"""Data-parallel training: 2 CPU processes (torchrun, gloo), as on a machine with 2 GPUs (NCCL).

The runs use a backbone and heads without dropout, so that the only randomness is the seeded
batch order and a 2-process run can be compared with a 1-process run over the same global batch
(2 processes x 4 examples against 1 process x 4 examples x 2 accumulation steps).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers
import yaml

from conftest import WORDS, sentiment_rows, tiny_config, write_csv

WEIGHTS = ("heads.json", "backbone/model.safetensors")  # and a heads/NAME/model.safetensors per head


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A dropout-free tiny BERT and data for two heads from two files (each row lacks one label)."""
    root = tmp_path_factory.mktemp("ddp")
    model = root / "model"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(model)
    config = tiny_config("bert")
    config.vocab_size, config.hidden_dropout_prob, config.attention_probs_dropout_prob = len(vocab), 0.0, 0.0
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(model)
    sentiment = write_csv(root / "sentiment.csv", sentiment_rows(20, seed=1))
    scores = write_csv(root / "scores.csv", sentiment_rows(20, seed=2))
    # mean pooling (the default before `auto`, which is [CLS] here): under [CLS] pooling the setfit recipe's two
    # schedules end up to 6e-5 apart in the embeddings (float summation order; most of their rows get tiny
    # gradients through one position), beyond the tolerance of the few-shot test below
    tasks = [
        {"name": "sentiment", "data": str(sentiment), "dropout": 0.0, "pooling": "mean"},
        {
            "name": "score",
            "data": str(scores),
            "label": "score",
            "type": "regression",
            "dropout": 0.0,
            "pooling": "mean",
        },
    ]
    settings = {
        "model": str(model),
        "tasks": tasks,
        "strategy": "full",
        "weighting": "uncertainty",  # learned loss weights: a head absent from a batch leaves its own unused
        "epochs": 3,
        "batch_size": 4,
        "lr": 1e-2,
        "backbone_lr": 1e-3,
        "val_fraction": 0.2,  # 16 + 16 training rows: 8 batches, 4 per process
        "patience": 0,
        "save_every": 1,
        "progress": False,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(settings))
    return root, root / "config.yaml"


def headkit_train(config: Path, out: Path, processes: int, *flags: str) -> list[str]:
    launcher = [sys.executable, "-m", "headkit"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        launcher += ["-m", "headkit"]
    return [*launcher, "train", "--config", str(config), "--output_dir", str(out), *flags]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(command: list[str]) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group, so that a hang kills its workers too. Each run
    has its own feature cache (next to its output), so every run computes its own features."""
    env = {**ENV, "HEADKIT_CACHE": command[command.index("--output_dir") + 1] + "-cache"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the saved model: heads, backbone, and LoRA adapters where there are some."""
    model = run_dir / "model"
    files = sorted(model.rglob("*.safetensors"))
    # a LoRA save names its base model instead of copying it: its tensors are the adapter's (and the heads')
    expected = ("heads.json", "adapter/adapter_model.safetensors") if (model / "adapter").is_dir() else WEIGHTS
    assert all((model / name).is_file() for name in expected) and any(f.parent.parent.name == "heads" for f in files)
    return {f"{f.relative_to(model)}:{k}": v for f in files for k, v in safetensors.torch.load_file(f).items()}


@pytest.fixture(scope="module")
def two_process_run(setup) -> tuple[Path, subprocess.CompletedProcess]:
    root, config = setup
    return root / "ddp", run(headkit_train(config, root / "ddp", 2))


STRATEGIES = {  # the LoRA path without dropout, like the rest
    "full": (),
    "frozen": ("--strategy", "frozen"),  # heads on the feature cache: rank 0 fills it, both read it
    "lora": ("--strategy", "lora", "--lora_dropout", "0"),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_processes_train_like_one_with_the_same_global_batch(setup, two_process_run, strategy):
    root, config = setup
    flags = STRATEGIES[strategy]
    ddp, done = two_process_run if strategy == "full" else (root / f"ddp-{strategy}", None)
    if done is None:
        done = run(headkit_train(config, ddp, 2, *flags))
    assert done.stderr.count("distributed: 2 processes (MULTI_CPU)") == 1  # one gloo group, rank 0 speaks
    assert done.stderr.count("phase '") == 1 and done.stdout.count("validation (8 examples)") == 1
    if strategy == "frozen":  # each process computed half of the features; the sum is the whole
        assert done.stderr.count("computed by 2 processes, a share each, and cached") == 2  # train and val
    run(headkit_train(config, root / f"single-{strategy}", 1, "--grad_accum", "2", *flags))

    single, parallel = weights(root / f"single-{strategy}"), weights(ddp)
    assert single.keys() == parallel.keys()
    for name, tensor in single.items():  # the data were sharded, not duplicated: the same updates
        torch.testing.assert_close(parallel[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    assert any("log_vars" in name for name in single)  # the learned loss weights trained under DDP too
    assert strategy != "lora" or any("lora_" in name for name in single)  # and the adapters


def test_max_steps_counts_optimizer_steps_under_two_processes(setup):
    """--max_steps 5 is 5 optimizer steps whatever the process count: 2 processes step through 4
    batches an epoch each (not the 8 of both), so they run 2 epochs, the second cut after one."""
    root, config = setup
    run(headkit_train(config, root / "ddp-steps", 2, "--max_steps", "5"))
    run(headkit_train(config, root / "single-steps", 1, "--grad_accum", "2", "--max_steps", "5"))
    assert _step(root / "ddp-steps") == _step(root / "single-steps") == 5
    single, parallel = weights(root / "single-steps"), weights(root / "ddp-steps")
    for name, tensor in single.items():
        torch.testing.assert_close(parallel[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _step(run_dir: Path) -> int:
    try:
        return yaml.safe_load((run_dir / "checkpoint" / "state.json").read_text())["progress"]["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _kill_one_worker_mid_run(config: Path, out: Path, at_step: int, last_step: int) -> subprocess.Popen:
    """Start a 2-process run and SIGKILL one worker once `at_step` is checkpointed but before the
    last step. Both workers are stopped (SIGSTOP) before the step is read, so the check and the
    kill see the same state; on a loaded machine the poll can wake after the run has trained to
    its end, and then the attempt starts over instead of killing a run that was already done."""
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        launcher = subprocess.Popen(
            headkit_train(config, out, 2),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while _step(out) < at_step and launcher.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        workers = _children(launcher.pid)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        if len(workers) == 2 and _step(out) < last_step:
            os.kill(workers[-1], signal.SIGKILL)
            os.kill(workers[0], signal.SIGCONT)
            return launcher
        for pid in workers:  # torchrun starts its workers in their own process groups: kill them by pid
            os.kill(pid, signal.SIGKILL)
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    pytest.fail("three runs finished (or never started) before a process could be killed mid-run")


def test_one_process_killed_mid_epoch_resumes_with_two_to_the_same_weights(setup, two_process_run):
    root, config = setup
    reference, _ = two_process_run
    killed = root / "killed"
    launcher = _kill_one_worker_mid_run(config, killed, at_step=6, last_step=12)  # 6 of 12: mid-epoch 2
    assert launcher.wait(timeout=120) != 0  # the launcher stops the other process too
    assert not (killed / "model").exists()

    resumed = run(headkit_train(config, killed, 2, "--resume"))
    assert resumed.stderr.count("resumed from") == 1
    for name, tensor in weights(reference).items():
        torch.testing.assert_close(weights(killed)[name], tensor, atol=0, rtol=0, msg=name)


# (recipe, per-process options under 2 processes, options of the equal 1-process run)
FEWSHOT_RECIPES = [
    # setfit: --batch_size is pairs per process, so 2 x 8 pairs a step equal 1 x 16
    (("--fewshot_recipe", "setfit", "--fewshot_iterations", "2"), ("--batch_size", "8"), ("--batch_size", "16")),
    # all-pairs: --batch_size is the step's examples; each process takes half of the step's pairs
    (("--fewshot_steps", "3"), ("--batch_size", "16"), ("--batch_size", "16")),
]


@pytest.mark.parametrize(("recipe", "parallel_batch", "single_batch"), FEWSHOT_RECIPES)
def test_few_shot_pairs_are_shared_out_and_give_the_one_process_result(setup, recipe, parallel_batch, single_batch):
    """Shared-out contrastive steps equal one process's steps; then every process solves the
    heads on the same features and rank 0 writes."""
    root, config = setup
    fewshot = ("--strategy", "fewshot", *recipe, "--val_fraction", "0.2")
    name = "setfit" if "setfit" in recipe else "all-pairs"
    done = run(headkit_train(config, root / f"fewshot-ddp-{name}", 2, *fewshot, *parallel_batch))
    assert done.stderr.count("contrastive phase (") == 1
    run(headkit_train(config, root / f"fewshot-single-{name}", 1, *fewshot, *single_batch))

    single, parallel = weights(root / f"fewshot-single-{name}"), weights(root / f"fewshot-ddp-{name}")
    for name, tensor in single.items():  # the tuned backbone and the heads solved on it
        torch.testing.assert_close(parallel[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("mode", ["FSDP", "DEEPSPEED"])
def test_accelerate_modes_headkit_does_not_train_with_are_refused_by_name(mode):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from headkit.errors import HeadkitError
    from headkit.training.distributed import check_distributed

    with pytest.raises(HeadkitError, match="FSDP and DeepSpeed are not supported"):
        check_distributed(SimpleNamespace(distributed_type=DistributedType[mode]))
    check_distributed(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))  # DDP on GPUs: fine
