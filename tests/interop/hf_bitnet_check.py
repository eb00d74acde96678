"""Loads a bitqat `hf-bitnet` export with Hugging Face transformers (CPU) and compares its logits with
the ones bitqat computed for the same tokens.

usage: hf_bitnet_check.py EXPORT_DIR EXPECTED.safetensors TOL_F32 TOL_BF16
EXPECTED holds `tokens` (int64 [B, T]) and `logits` (float32 [B, T, V]). The model is loaded twice:
in float32 (max |diff| must be <= TOL_F32) and in bfloat16 (max |diff| <= TOL_BF16 * max |logit|).
Exits 1 when a check fails.
"""
import os
import sys

# transformers' BitLinear methods are wrapped in torch.compile; eager mode computes the same on the
# CPU without a compiler toolchain and in a fraction of the time.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.integrations.bitnet import BitLinear  # noqa: E402


def main() -> int:
    export_dir, expected_path = sys.argv[1], sys.argv[2]
    tol_f32, tol_bf16 = float(sys.argv[3]), float(sys.argv[4])
    expected = load_file(expected_path)
    tokens, want = expected["tokens"], expected["logits"]
    scale = want.abs().max().item()
    ok = True
    for dtype, tol in ((torch.float32, tol_f32), (torch.bfloat16, tol_bf16 * scale)):
        model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=dtype)
        model.eval()
        q = model.model.layers[0].self_attn.q_proj
        print(f"{dtype}: {type(model).__name__}, q_proj is {type(q).__module__}.{type(q).__name__}")
        if type(model).__name__ != "BitNetForCausalLM" or not isinstance(q, BitLinear):
            print("FAIL: not loaded as BitNetForCausalLM with packed BitLinear layers")
            ok = False
            continue
        with torch.no_grad():
            got = model(input_ids=tokens).logits.float()
        diff = (got - want).abs().max().item()
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        print(f"{dtype}: max |logit diff| {diff:.3g} (bound {tol:.3g}, max |logit| {scale:.3g}), "
              f"argmax agreement {agree:.3f}")
        ok = ok and diff <= tol
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
