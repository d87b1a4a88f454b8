"""The CLI as a practitioner reads it: typed choices in --help, dashed aliases, one meaning per
flag name, --version, logging with --quiet / --verbose, progress bars, Ctrl-C messages."""

import logging
import subprocess
import sys
import typing

import pytest

import headkit
from headkit.cli import commands
from headkit.cli.main import main
from headkit.cli.parser import build_parser, normalise_argv
from headkit.training.config import TrainConfig
from headkit.training.pretrain import PretrainConfig

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return str(write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows(24)))


def parse(*argv: str):
    args = build_parser().parse_args(normalise_argv(list(argv)))
    return args[args.command]


def choices(hint) -> set[str]:
    """The literal values a (possibly Union / Optional) annotation allows."""
    if typing.get_origin(hint) is typing.Literal:
        return set(typing.get_args(hint))
    return set().union(*(choices(h) for h in typing.get_args(hint))) if typing.get_args(hint) else set()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"headkit {headkit.__version__}"


# argv -> what the one-line error says; argparse's convention: 2 when the command line itself is
# wrong (the parser's own checks, or a UsageError from a command), 1 when a well-formed command fails
USAGE_ERRORS = {
    "unknown flag": (["inspect", "minilm", "--bogus"], "unrecognized arguments: --bogus"),
    "bad value": (["evaluate", "run", "--batch_size", "many"], "batch_size"),
    "missing required argument": (["inspect"], "model"),
    "contradictory options": (["export", "run", "--to", "onnx", "--only_head", "a"], "--only_head applies to"),
    "missing option checked by the command": (["predict", "run"], "nothing to predict"),
    "advise without its data": (["advise"], "advise needs --data"),
    "value out of range": (["train", "--data", "x.csv", "--head", "a:b", "--batch_size", "0"], "at least 1"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2(case, capsys):
    argv, message = USAGE_ERRORS[case]
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_runtime_errors_exit_1(tiny_text_model, tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "not found" in capsys.readouterr().err
    missing_data = str(tmp_path / "no.csv")
    argv = ["train", "--model", str(tiny_text_model), "--data", missing_data, "--head", "a:label"]
    assert main([*argv, "--output_dir", str(tmp_path / "run")]) == 1
    assert "no.csv" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--text", "good"]) == 1
    assert "neither a training run" in capsys.readouterr().err


def test_the_process_exit_status_and_help_follow_the_convention(tmp_path):
    """The installed entry point (not only main()'s return value): sys.exit carries the code."""

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "headkit", *argv], capture_output=True, text=True, timeout=300)

    assert run("inspect", "minilm", "--bogus").returncode == 2
    done = run("inspect", str(tmp_path / "missing"))
    assert done.returncode == 1 and "not found" in done.stderr and "Traceback" not in done.stderr
    shown = " ".join(run("--help").stdout.split())
    assert "1 the run failed" in shown and "2 a usage error" in shown
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"headkit {headkit.__version__}"


def test_every_fixed_set_of_values_is_a_literal_listed_by_help(capsys):
    fixed = {
        (TrainConfig, "strategy"): {"frozen", "full", "lora", "lp-ft", "fewshot"},
        (TrainConfig, "weighting"): {"static", "uncertainty"},
        (TrainConfig, "pooling"): {"mean", "cls", "max", "last", "pooler"},
        (TrainConfig, "mixed_precision"): {"auto", "no", "bf16", "fp16"},
        (TrainConfig, "report_to"): {"none", "tensorboard"},
        (TrainConfig, "class_weights"): {"none", "auto"},
        (PretrainConfig, "objective"): {"mlm", "clm"},
        (commands.predict, "engine"): {"torch", "onnx", "onnx-int8"},
        (commands.serve, "engine"): {"torch", "onnx", "onnx-int8"},
        (commands.export, "to"): {"transformers", "onnx"},
        (commands.advise, "device"): {"auto", "cpu", "cuda"},
    }
    for (owner, name), expected in fixed.items():
        assert expected <= choices(typing.get_type_hints(owner)[name]), (owner, name)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())  # help wraps lines anywhere
    for strategy in ("'frozen'", "'full'", "'lora'", "'lp-ft'", "'fewshot'", "partial:K"):
        assert strategy in shown
    assert "{auto,mean,cls,max,last,pooler}" in shown and "{static,uncertainty}" in shown


def test_a_wrong_choice_lists_the_valid_ones(capsys):
    assert main(["train", "--pooling", "avg", "--data", "x", "--head", "a:b"]) == 2
    assert "--pooling 'avg': choose one of auto, mean, cls, max, last, pooler" in capsys.readouterr().err
    assert main(["pretrain", "--objective", "seq2seq"]) == 2
    assert "--objective 'seq2seq': choose one of mlm, clm" in capsys.readouterr().err
    assert parse("train", "--strategy", "partial:3").strategy == "partial:3"


def test_dashed_flags_are_aliases_of_the_underscored_ones():
    args = parse("train", "--output-dir", "runs/x", "--no-progress", "--max-grad-norm=0.5", "--lora-r", "4")
    assert (args.output_dir, args.progress, args.max_grad_norm, args.lora_r) == ("runs/x", False, 0.5, 4)
    assert parse("predict", "run", "--text-column", "review").text_column == "review"
    assert normalise_argv(["predict", "run", "--text", "a -- b", "--text", "--not-a-flag-value"])[3] == "a -- b"


def test_one_meaning_per_flag_name_across_commands():
    """--text: literal texts (a list) wherever it exists; the column is --text_column; --head is
    always NAME:COLUMN (a list) where it exists."""
    for fn in commands.COMMANDS:
        hints = typing.get_type_hints(fn)
        config = next((h for h in hints.values() if isinstance(h, type) and issubclass(h, TrainConfig)), None)
        hints = typing.get_type_hints(config) if config else hints
        if "text" in hints:
            assert list[str] in (hints["text"], *typing.get_args(hints["text"])), fn.__name__
        if "head" in hints:
            assert list[str] in (hints["head"], *typing.get_args(hints["head"])), fn.__name__
        if "text_column" in hints:
            assert hints["text_column"] is str, fn.__name__


def test_old_spellings_still_work_with_a_deprecation_note(capsys):
    assert parse("train", "--text", "review").text_column == "review"
    assert parse("advise", "--text", "review").text_column == "review"
    assert parse("export", "run", "--head", "topic").only_head == "topic"
    assert main(["evaluate", "some-run", "--text", "review"]) == 2  # fails later: no --data (a usage error)
    err = capsys.readouterr().err
    assert "evaluate --text is deprecated: use --text_column" in err and "needs labelled data" in err
    assert parse("predict", "run", "--text", "a review").text == ["a review"]  # --text is texts here: unchanged


def _train_args(model, data, out) -> list[str]:
    return ["train", "--model", str(model), "--data", data, "--head", "sentiment:label", "--epochs", "1",
            "--output_dir", str(out), "--no_progress"]  # fmt: skip


def test_quiet_keeps_warnings_and_verbose_adds_debug(tiny_text_model, data_file, tmp_path, capsys):
    assert main(_train_args(tiny_text_model, data_file, tmp_path / "normal")) == 0
    normal = capsys.readouterr()
    assert "phase 'heads'" in normal.err and "validation" in normal.out
    assert main([*_train_args(tiny_text_model, data_file, tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "phase 'heads'" not in quiet.err and "max_length 128 is more than" in quiet.err  # a warning stays
    assert "validation" in quiet.out  # the result table is output, not a log record
    assert main(["-v", *_train_args(tiny_text_model, data_file, tmp_path / "verbose")]) == 0
    assert "INFO headkit.training.loop: phase 'heads'" in capsys.readouterr().err


def test_library_logging_can_be_quieted_or_handed_to_the_application(tiny_text_model, data_file, tmp_path, capsys):
    from headkit.training.recipe import train

    config = TrainConfig(model=str(tiny_text_model), data=data_file, head=["sentiment:label"], epochs=1,
                         output_dir=str(tmp_path / "a"), progress=False)  # fmt: skip
    logger = logging.getLogger("headkit")
    level = logger.level
    try:
        headkit.set_verbosity(logging.WARNING)
        train(config)
        assert "phase 'heads'" not in capsys.readouterr().err
        headkit.set_verbosity(logging.INFO)
        headkit.disable_default_handler()
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger().addHandler(handler)
        try:
            train(TrainConfig(**{**config.__dict__, "output_dir": str(tmp_path / "b")}))
        finally:
            logging.getLogger().removeHandler(handler)
        assert any("phase 'heads'" in r.getMessage() for r in records)  # the application's handler got it
        assert "phase 'heads'" not in capsys.readouterr().err  # and headkit's own did not print it too
    finally:
        headkit._logging.install_default_handler()
        logger.setLevel(level)


def test_progress_bars_on_predict_evaluate_and_export(tiny_text_model, data_file, saved_multihead, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(tiny_text_model, data_file, run)) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "--input", data_file, "--output", str(tmp_path / "p.jsonl"),
                 "--batch_size", "4"]) == 0  # fmt: skip
    assert "predict:" in capsys.readouterr().err
    assert main(["predict", str(run), "--input", data_file, "--output", str(tmp_path / "q.jsonl"),
                 "--batch_size", "4", "--no_progress"]) == 0  # fmt: skip
    assert "predict:" not in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", data_file, "--batch_size", "4"]) == 0
    assert "evaluate:" in capsys.readouterr().err
    out = str(tmp_path / "export")
    assert main(["export", str(saved_multihead), "--to", "transformers", "--only_head", "tags", "--output", out]) == 0
    assert "export transformers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "target", "message"),
    [
        (["predict", "run", "--input", "x.csv"], "headkit.ship.predict.load_for_inference", "no output file"),
        (["train", "--data", "x.csv", "--head", "a:b"], "headkit.training.recipe.train", "--resume"),
        (["serve", "run"], "headkit.ship.serve.load_app", "server stopped"),
    ],
)
def test_ctrl_c_says_what_it_means_for_the_command(argv, target, message, monkeypatch, capsys):
    pytest.importorskip("fastapi")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert message in err
    if argv[0] != "train":
        assert "--resume" not in err


def test_print_config_shows_the_recipe_the_strategy_brings(capsys):
    import yaml

    assert main(["train", "--strategy", "fewshot", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    shown = ("strategy", "val_fraction", "batch_size", "fewshot_recipe", "fewshot_steps", "backbone_lr")
    assert tuple(config[k] for k in shown) == ("fewshot", 0.0, 32, "all-pairs", "auto", 2e-4)
    assert main(["train", "--strategy", "frozen", "--epochs", "5", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["epochs"], config["lr"], config["patience"]) == (5, 0.01, 0)  # a flag wins over the recipe
