"""The tables of measured figures in README.md and docs/ are what ``make docs`` writes from the
committed ``benchmarks/results/*.json``, and every results file says what wrote it, and where."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def make_docs():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_docs
        yield make_docs
    finally:
        sys.path.remove(str(ROOT / "tools"))


@pytest.mark.parametrize("name", ["README.md", "docs/training.md", "docs/deployment.md", "docs/performance.md",
                                  "docs/serving.md"])
def test_committed_tables_are_what_the_generator_writes(make_docs, name):
    text = (ROOT / name).read_text()
    assert make_docs.render(text, make_docs.Results()) == text, f"run `make docs`: {name} is out of date"


def test_every_marked_table_has_a_maker_and_every_maker_is_used(make_docs):
    used = {m.group(2) for name in make_docs.DOCS for m in make_docs.MARKER.finditer((ROOT / name).read_text())}
    assert used == set(make_docs.TABLES)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_results_file_names_its_command_and_machine(make_docs, path):
    provenance = make_docs.Results().provenance(path.name)
    assert provenance["command"].startswith("python benchmarks/"), provenance
    assert provenance["machine"], provenance


def test_render_replaces_only_between_markers(make_docs):
    results = make_docs.Results()
    text = "before\n<!-- results:ddp-scaling -->\nstale\n<!-- /results:ddp-scaling -->\nafter\n"
    out = make_docs.render(text, results)
    assert out.startswith("before\n<!-- results:ddp-scaling -->\n| processes × threads |")
    assert out.endswith("\n<!-- /results:ddp-scaling -->\nafter\n") and "stale" not in out
    assert make_docs.render(out, results) == out
    with pytest.raises(SystemExit, match="unknown table"):
        make_docs.render("<!-- results:nope -->\n<!-- /results:nope -->", results)


def test_tables_follow_the_json(make_docs, tmp_path):
    """A changed figure changes the table: the docs cannot keep a number the JSON lost."""
    for f in RESULTS.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    ddp = json.loads((tmp_path / "ddp_scaling.json").read_text())
    ddp["images_per_sec_2"] = 123.0
    (tmp_path / "ddp_scaling.json").write_text(json.dumps(ddp))
    assert "| 123 |" in make_docs.TABLES["ddp-scaling"](make_docs.Results(tmp_path))


def test_machine_names(make_docs):
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "isa": ["avx2", "avx512_bf16", "avx512_vnni"], "logical_cpus": 2}
    assert make_docs.machine_name(xeon) == "2-core Intel Xeon (AVX-512-BF16, VNNI, no AMX)"
    assert make_docs.machine_name({"cpu": "AMD EPYC", "isa": ["avx2"], "logical_cpus": 2}) == \
        "2-core AMD EPYC (AVX2 only)"
