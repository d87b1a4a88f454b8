"""Optional features: used without their extra, each gives one HeadkitError that names the pip command.

Each case runs in a fresh interpreter where the extra's modules are blocked (`sys.modules[name] =
None` makes both `import name` and `importlib.util.find_spec(name)` fail as if it were not
installed), so the test holds on a machine where every extra is installed, as in CI.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from headkit.extras import EXTRAS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# extra -> code that uses the feature (the paths and files it names need not exist: the check comes first)
USES = {
    "serve": "import headkit.ship.serve",
    "onnx": "from headkit.ship.export import export_onnx; export_onnx('no-run', 'no-out')",
    "onnx-engine": "from headkit.ship.onnx_engine import OnnxModel; OnnxModel('no-export')",
    "gguf": "from headkit.backbone import load_config; load_config(GGUF)",
    "timm": "from headkit.backbone import resolve_model; resolve_model('timm:resnet18')",
    "tensorboard": (
        "from headkit.training.config import TrainConfig; from headkit.training.tracking import start_tracking; "
        "start_tracking(None, TrainConfig(report_to='tensorboard'))"
    ),
}


def run_without(extra: str, code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    script = f"import sys; sys.modules.update(dict.fromkeys({list(EXTRAS[extra])!r}))\nGGUF = {str(gguf)!r}\n{code}\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("use", sorted(USES))
def test_a_feature_without_its_extra_names_the_pip_command(use, tmp_path):
    extra = use.split("-")[0]
    done = run_without(extra, USES[use], tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("headkit.errors.MissingExtraError:"), done.stderr[-2000:]
    assert f"pip install 'headkit[{extra}]'" in last


def test_the_cli_says_it_in_one_line(tmp_path):
    code = "from headkit.cli.main import main; sys.exit(main(['serve', 'no-run']))"
    done = run_without("serve", code, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]  # a runtime error: the command line itself was fine
    assert "Traceback" not in done.stderr
    assert "pip install 'headkit[serve]'" in done.stderr


def test_the_same_feature_with_its_extra_gets_past_the_check(tmp_path):
    done = run_without("gguf", "import headkit.ship.serve; print('ok')", tmp_path)  # serve's extra is present
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _top_level_modules(distribution: str) -> set[str]:
    """Import names a distribution installs, from its file list (top_level.txt is often absent)."""
    files = importlib.metadata.distribution(distribution).files or []
    return {f.parts[0].removesuffix(".py") for f in files if not f.parts[0].endswith((".dist-info", ".data"))}


@pytest.mark.parametrize(
    "extra", [pytest.param(e, marks=[pytest.mark.timm] if e == "timm" else []) for e in sorted(EXTRAS)]
)
def test_extras_in_pyproject_install_the_modules_headkit_checks_for(extra):
    """Checked where the extra is installed: the timm extra by scripts/test_wheel.sh."""
    if extra == "timm":
        pytest.importorskip("timm", reason="no timm extra here (scripts/test_wheel.sh runs these tests)")
    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in declared[extra]]
    provided = set().union(*(_top_level_modules(n) for n in names))
    missing = [m for m in EXTRAS[extra] if m not in provided]
    assert not missing, f"extra {extra!r} ({names}) installs no module named {missing}"
