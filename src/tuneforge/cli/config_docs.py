"""`tuneforge config-docs`: write docs/config.md, the reference of every run-config key, from the field docstrings
of the config classes (every section, every method's and every task's fields). It lives here, in the CLI layer,
because it needs the method and task registries; tests/test_config_docs.py checks the committed file is current."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import typer

HEADER = """# Run configuration reference

Every key of a run config (`tuneforge train CONFIG.yaml`, `--set a.b=value`), generated from the docstrings of
the config classes by `tuneforge config-docs` (do not edit by hand: change the docstring, then run it again; a test
fails when this file is out of date). An unknown or ill-typed key is an error naming the file, line and key."""


def _class_doc(cls) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def _section(title: str, cls, intro: str = "", skip: tuple[str, ...] = (), level: int = 2,
             seen: dict | None = None) -> list[str]:
    """A heading, the class's docstring, its table, then one sub-section per nested dataclass field (a class
    already shown under another key is referred to, not repeated)."""
    from ..config.field_docs import fields_table, nested_dataclasses

    seen = {} if seen is None else seen
    heading, intro = f"{'#' * level} {title}", " ".join(x for x in (intro, _class_doc(cls)) if x)
    if cls in seen:
        return [heading, f"{intro} The same keys as `{seen[cls]}`.".strip()]
    seen[cls] = title
    parts = [heading, intro, fields_table(cls, skip)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for nested in [] if f.name in skip else nested_dataclasses(hints[f.name]):
            many = typing.get_origin(hints[f.name]) is list
            parts += _section(f"{title}.{f.name}{'[]' if many else ''}", nested, level=min(level + 1, 4), seen=seen)
    return [p for p in parts if p]


def config_reference() -> str:
    """The whole of docs/config.md."""
    import tuneforge.methods  # noqa: F401  (registers the methods)
    import tuneforge.train.tasks  # noqa: F401  (registers the tasks)

    from ..config import RunConfig
    from ..config.field_docs import field_docs
    from ..registry import METHODS, TASKS

    hints, docs = typing.get_type_hints(RunConfig), field_docs(RunConfig)
    parts = [HEADER]
    for f in dataclasses.fields(RunConfig):
        if f.name in ("method", "task", "task_config"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            parts += _section(f.name, hints[f.name], intro=" ".join(docs[f.name].split()))
        else:
            parts += [f"## {f.name}", " ".join(docs[f.name].split()) + f" Default: `{f.default}`."]
    parts += ["## method", " ".join(docs["method"].split()) + " The keys of each method, besides `name`:"]
    for name, cls in METHODS.items():
        parts += _section(f"method: {name}", cls.config_class, level=3)
    parts += ["## task", " ".join(docs["task"].split()) + " The settings of each task that has some:"]
    for name, cls in TASKS.items():
        if cls.config_class is not None:  # declared on BaseTask (None: no settings)
            parts += _section(f"task: {name}", cls.config_class, level=3, skip=("name",))
    return "\n\n".join(parts) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("config-docs")
    def config_docs_cmd(
        out: Path = typer.Option(Path("docs/config.md"), "--out", help="Where to write the reference."),
        check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 when the file is out of date."),
    ) -> None:
        """Write docs/config.md, every run-config key with its type, default and description."""
        text = config_reference()
        if check:
            current = out.read_text() if out.is_file() else ""
            if current != text:
                typer.echo(f"{out} is out of date: run `tuneforge config-docs`", err=True)
                raise typer.Exit(1)
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}")
