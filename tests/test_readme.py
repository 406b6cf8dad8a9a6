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
