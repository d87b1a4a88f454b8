"""Run the conformance suite and write the docs' supported-models table from its results.

    python scripts/supported_models.py            # run tests/contracts/test_conformance.py, rewrite the page
    python scripts/supported_models.py --check    # exit 1 if the page's table differs from the matrix

The table is rendered from the suite's own matrix (tests/contracts/model_zoo.py) and marks ✗
every cell whose conformance test failed in this run, so it never claims more than was checked.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "supported-models.md"
sys.path.insert(0, str(ROOT / "tests" / "contracts"))

from model_zoo import FAMILIES, MARKERS, STRATEGIES, TABLE_HEADS, supported_models_table  # noqa: E402

CELL = re.compile(r"\[(?P<id>[^\]]+)\]$")


def failed_cells(junit: Path) -> set[str]:
    """The family, family-head and family-strategy cells of every failed or erroring test."""
    failed = set()
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        match = CELL.search(case.get("name", ""))
        failed |= {cell_of(match["id"])} if match else {f.name for f in FAMILIES}  # unparametrised: every family
    return failed


def cell_of(test_id: str) -> str:
    """A test id (bert, bert-span-left, bert-classification--, bert-partial:1) -> its table cell."""
    family = max((f.name for f in FAMILIES if test_id == f.name or test_id.startswith(f"{f.name}-")), key=len)
    rest = test_id[len(family) + 1 :]
    names = sorted([*TABLE_HEADS, *STRATEGIES], key=len, reverse=True)
    return next((f"{family}-{n}" for n in names if rest == n or rest.startswith(f"{n}-")), family)


def run_suite() -> set[str]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "conformance.xml"
        command = [sys.executable, "-m", "pytest", "-q", "tests/contracts/test_conformance.py", f"--junitxml={junit}"]
        subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
        return failed_cells(junit)


def with_table(page: str, table: str) -> str:
    start, end = MARKERS
    before, _, rest = page.partition(start)
    _, _, after = rest.partition(end)
    return f"{before}{start}\n{table}\n{end}{after}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help=f"compare {PAGE.name} with the matrix; run nothing")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    name = PAGE.relative_to(ROOT)
    if MARKERS[0] not in page:
        print(f"{name} has no {MARKERS[0]} ... {MARKERS[1]} block", file=sys.stderr)
        return 1
    if args.check:
        same = with_table(page, supported_models_table()) == page
        print(f"{name}: the supported-models table matches the matrix" if same else f"{name}: the table is stale")
        return 0 if same else 1
    failed = run_suite()
    PAGE.write_text(with_table(page, supported_models_table(failed)), encoding="utf-8")
    print(f"{name}: supported-models table written ({len(failed)} failing cell(s): {sorted(failed)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
