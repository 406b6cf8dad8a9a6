import json

from typer.testing import CliRunner

from tuneforge.cli.main import app, register_verbs
from tuneforge.registry import METHODS


def test_methods_lists_every_registered_method_with_facts():
    register_verbs(app)
    result = CliRunner().invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == METHODS.names()
    lora = next(r for r in rows if r["name"] == "lora")
    assert lora["mergeable"] and lora["paper"].startswith("https://arxiv.org/") and lora["trainable_parameters"]
    table = CliRunner().invoke(app, ["methods", "--markdown"]).output
    assert "| lora | weight | yes |" in table


def test_readme_methods_table_is_what_tuneforge_methods_prints():
    from pathlib import Path

    register_verbs(app)
    result = CliRunner().invoke(app, ["methods", "--markdown"])
    assert result.exit_code == 0, result.output
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = result.output.strip()
    start = readme.find(table.splitlines()[0])
    assert start >= 0, "README.md has no methods table"
    shown = readme[start:].split("\n\n")[0].strip()
    assert shown == table, "README.md's methods table differs from `tuneforge methods --markdown`: paste its output"
