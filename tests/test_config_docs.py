"""docs/config.md is generated from the config classes' field docstrings; the committed file must be current and
every key must say what it does."""
import dataclasses
import typing
from pathlib import Path

from typer.testing import CliRunner

from tuneforge.cli.config_docs import config_reference
from tuneforge.cli.main import app, register_verbs
from tuneforge.config.field_docs import field_docs, type_name

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_committed_config_reference_is_current():
    assert DOC.read_text() == config_reference(), "docs/config.md is out of date: run `tuneforge config-docs`"


def test_every_method_and_task_and_key_is_in_the_reference():
    from tuneforge.registry import METHODS, TASKS

    text = config_reference()
    for name, cls in METHODS.items():
        assert f"### method: {name}\n" in text
        for f in dataclasses.fields(cls.config_class):
            assert field_docs(cls.config_class).get(f.name), f"method {name}: field {f.name} has no docstring"
    for name, cls in TASKS.items():
        if getattr(cls, "config_class", None) is not None:
            assert f"### task: {name}\n" in text
    assert "| `early_stopping` |" in text and "### train.early_stopping" in text and "### data.mixture[]" in text


def test_inherited_field_docstrings_and_type_spelling():
    @dataclasses.dataclass
    class Base:
        a: int = 1
        """Base's a."""

    @dataclasses.dataclass
    class Child(Base):
        b: typing.Optional[typing.Literal["x", "y"]] = None
        """Child's b."""

    assert field_docs(Child) == {"a": "Base's a.", "b": "Child's b."}
    assert type_name(typing.get_type_hints(Child)["b"]) == '"x" | "y" | null'
    assert type_name(list[str] | None) == "list[str] | null"


def test_cli_check_reports_a_stale_file(tmp_path):
    register_verbs(app)
    stale = tmp_path / "config.md"
    stale.write_text("old\n")
    result = CliRunner().invoke(app, ["config-docs", "--out", str(stale), "--check"])
    assert result.exit_code == 1 and stale.read_text() == "old\n"
    assert CliRunner().invoke(app, ["config-docs", "--out", str(stale)]).exit_code == 0
    assert CliRunner().invoke(app, ["config-docs", "--out", str(stale), "--check"]).exit_code == 0
