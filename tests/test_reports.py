"""Every committed ``benchmarks/results/*.md`` is what ``benchmarks/render.py`` makes of its
JSON (a table cannot disagree with its numbers), and no report says how or where a number
was produced: the machine, the run and its date stay in the JSON."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import render  # noqa: E402  (benchmarks/render.py)


@pytest.fixture(autouse=True)
def _seeded():
    """Rendering uses no Keras: none of conftest's per-test seeding and session clearing."""
    yield


REPORTS = sorted(p for p in RESULTS.glob("*.json") if p.with_suffix(".md").exists())
MARKDOWN = sorted(RESULTS.glob("*.md"))

# Words of run logistics: machines and kernel builds, sessions, dates, borrowed devices,
# output folders of particular runs, issue numbers.
LOGISTICS = re.compile(
    r"fc-v\d+|\bkernel v|\bhosts?\b|\bsessions?\b|Linux-\d|glibc|\b[HA]100\b|\bH200\b|"
    r"\blent\b|\bborrowed\b|\b20\d\d-\d\d-\d\d\b|/tmp/|/root/|\bmachines?\b|"
    r"\b\d+ (?:CPUs|cores)\b|\bissues?\b|\bnot (?:a )?timings?\b|\bshar(?:ed|ing) the CPU\b|"
    r"\bslower\b|\brun just before\b",
    re.IGNORECASE,
)


def test_every_markdown_report_has_its_json():
    assert MARKDOWN and REPORTS
    assert [p.with_suffix(".json") for p in MARKDOWN] == REPORTS
    assert [Path(p) for p in render.reports(str(RESULTS))] == REPORTS


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.stem)
def test_markdown_report_is_rendered_from_its_json(path):
    assert path.with_suffix(".md").read_text() == render.render_file(str(path)), (
        f"{path.with_suffix('.md').name} differs from its JSON: "
        "python benchmarks/report.py --write"
    )


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.stem)
def test_markdown_report_names_no_host_or_run_logistics(path):
    found = [
        f"line {i}: {m.group(0)!r}"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        for m in LOGISTICS.finditer(line)
    ]
    assert not found, f"{path.name}: {found}"


def test_the_logistics_check_catches_what_the_notes_said():
    for text in (
        "machine: Linux-6.18.44-fc-v1098-x86_64-with-glibc2.36, 2 CPUs",
        "3542 s ran on a slower host (kernel v782)",
        "2026-11-30 (later session): naive_ste rerun",
        "Runs 1 and 2 on the lent H200 GPU",
        "`python benchmarks/cost.py --out /tmp/after2`",
    ):
        assert LOGISTICS.search(text), text


def test_a_table_that_disagrees_with_its_json_is_caught(tmp_path):
    """Change one number of a committed report's JSON: its rendering no longer matches the
    committed Markdown, and ``report.py --check`` names the file."""
    report = json.loads((RESULTS / "cpu.json").read_text())
    seed = report["rows"]["bitat_aggregated"]["per_seed"]["0"]
    seed["accuracy"] -= 0.01
    assert render.render("cpu", report) != (RESULTS / "cpu.md").read_text()
    (tmp_path / "cpu.json").write_text(json.dumps(report))
    (tmp_path / "cpu.md").write_text((RESULTS / "cpu.md").read_text())
    assert render.stale(str(tmp_path)) == [str(tmp_path / "cpu.md")]
    render.write_markdown(str(tmp_path / "cpu.json"))
    assert render.stale(str(tmp_path)) == []


def test_report_check_passes_on_the_committed_results():
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_notes_and_machines_stay_in_the_json_only():
    """The reports that carry notes or a machine keep them in the JSON, not the Markdown."""
    for path in REPORTS:
        report = json.loads(path.read_text())
        text = path.with_suffix(".md").read_text()
        for note in report.get("notes", []):
            assert note not in text, path.name
        machine = report.get("machine")
        if isinstance(machine, dict):
            machine = machine.get("platform")
        if machine:
            assert machine not in text, path.name
