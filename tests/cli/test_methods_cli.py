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
