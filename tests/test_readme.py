"""The README's Python example on tiny models runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_adapter_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "tiny_llama()" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "adapter-a" / "adapter_model.safetensors").is_file()
    assert type(namespace["plain"].model.layers[0].self_attn.q_proj).__name__ == "Linear"


def test_readme_combine_example_runs(tmp_path, monkeypatch):
    import tuneforge.methods as M

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "tuneforge.combine(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "both" / "adapter_model.safetensors").is_file()
    model = namespace["model"]
    assert M.list_adapters(model)["both"].r == 12 and M.list_adapters(model)["both_r8"].r == 8
    layer = model.model.layers[0].self_attn.v_proj
    assert (layer.delta_weight("unstyle") + layer.delta_weight("style")).abs().max() < 1e-6
