"""Safety rules that hold for the whole code base: no pickle, no remote code unless asked."""

import re
from pathlib import Path

SOURCES = sorted((Path(__file__).resolve().parents[2] / "src" / "headkit").rglob("*.py"))


def test_no_pickle_anywhere():
    offenders = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(r"\bimport (pickle|dill|joblib)\b|\bpickle\.\w|allow_pickle=True", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"(?<![\w.])torch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert SOURCES and not offenders, offenders


def test_remote_code_is_off_by_default_everywhere():
    """Every public function that loads a model takes trust_remote_code and defaults it to False."""
    import inspect

    import headkit.backbone
    import headkit.cli.commands
    import headkit.model
    import headkit.ship.generate
    import headkit.ship.pipeline
    import headkit.ship.predict
    import headkit.training.config

    functions = [
        headkit.backbone.load_backbone,
        headkit.backbone.load_processor,
        headkit.backbone.inspect_model,
        headkit.model.load,
        headkit.model.MultiHeadModel.from_pretrained,
        headkit.model.MultiHeadModel.on_backbone,
        headkit.ship.predict.load_for_inference,
        headkit.ship.pipeline.pipeline,
        headkit.ship.generate.load_causal_lm,
        headkit.ship.generate.fill_mask,
        headkit.cli.commands.inspect,
        headkit.cli.commands.fill_mask,
    ]
    for fn in functions:
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn.__qualname__
    assert headkit.training.config.TrainConfig().trust_remote_code is False
    for path in SOURCES:  # and no code passes True itself (messages may mention the option)
        assert not passes_true(path), path.name


def passes_true(path: Path) -> bool:
    """Whether the code (not its strings or comments) contains `trust_remote_code=True`."""
    import io
    import tokenize

    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)]
    names = [(t.type, t.string) for t in tokens if t.type in (tokenize.NAME, tokenize.OP)]
    return any(
        names[i : i + 3] == [(tokenize.NAME, "trust_remote_code"), (tokenize.OP, "="), (tokenize.NAME, "True")]
        for i in range(len(names) - 2)
    )
