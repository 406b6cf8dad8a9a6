"""Resident weight memory of the packaged SmolLM2-135M base, dense and quantised, in the two usual storage dtypes.

weight_bytes counts parameters, buffers and bitsandbytes' quantisation constants (absmax, code, the double-quant
state), tied weights once; no adapter. The embedding / tied output head (28M of the 135M parameters) and the norms
stay dense in the model's dtype: fp32 here for CPU work, bf16 where the model is loaded in bf16 (the usual QLoRA
setting: compute_dtype follows the model's dtype).

    python benchmarks/qlora_weights.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    from tuneforge.models import load_model
    from tuneforge.quant import weight_bytes

    settings = [("float32", None), ("float32", "nf4"), ("float32", "fp4"), ("float32", "int8"),
                ("bfloat16", None), ("bfloat16", "nf4")]
    body, dense = [], None
    for dtype, quantization in settings:
        model = load_model(common.MODEL, device="cpu", dtype=dtype, quantization=quantization)
        mb = weight_bytes(model) / 2**20
        dense = dense or mb  # the first row: the fp32 dense base
        body.append([quantization or "dense", dtype, f"{mb:.1f}", f"{mb / dense:.2f}x"])
        del model
    print(common.table(["Linear weights", "everything else", "weights MB", "vs fp32 dense"], body))


if __name__ == "__main__":
    main()
