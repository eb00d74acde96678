"""Cross-check of a bitqat GGUF file with llama.cpp's own Python package (gguf-py): its reader must
parse the file, and its numpy dequantizers must give exactly the values bitqat expects.

usage: gguf_check.py FILE.gguf EXPECTED.safetensors
EXPECTED holds, per tensor name, the float32 values in torch order (ne reversed). Prints one line
per check and exits 1 on any mismatch.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file


def main() -> int:
    reader = GGUFReader(sys.argv[1])
    expected = load_file(sys.argv[2])
    fields = {f.name: f for f in reader.fields.values()}
    arch = fields["general.architecture"]
    print("general.architecture", bytes(arch.parts[arch.data[0]]).decode())
    tensors = {t.name: t for t in reader.tensors}
    bad = 0
    for name, want in expected.items():
        t = tensors.get(name)
        if t is None:
            print(f"MISSING {name}")
            bad += 1
            continue
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(want.shape)
        diff = float(np.max(np.abs(got - want))) if want.size else 0.0
        ok = diff == 0.0
        bad += not ok
        print(f"{'ok' if ok else 'MISMATCH'} {name} {t.tensor_type.name} shape {list(want.shape)} max_abs_diff {diff}")
    print(f"{len(expected)} tensors checked, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
