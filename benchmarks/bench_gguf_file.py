"""GGUF container: refquant's checked reader and atomic writer against gguf-py, on SmolLM2-135M.

read:  header + metadata (49k-token vocabulary, 49k merges) + tensor table, the mapping
       opened and closed — refquant.gguf.file.read vs gguf.GGUFReader.
write: the whole 94 MiB file re-written with the same metadata types and tensors —
       refquant.gguf.file.write (temporary file, fsync, rename) vs gguf.GGUFWriter.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from run import Case


def cases():
    import gguf

    from refquant._data import smollm2_path
    from refquant.gguf import file as gf

    path = smollm2_path()

    def refquant_read():
        with gf.read(path) as f:
            return len(f.tensors)

    def gguf_py_read():
        return len(gguf.GGUFReader(path).tensors)

    yield Case("gguf-file", "read SmolLM2 header + tensor table", refquant_read, "gguf-py GGUFReader", gguf_py_read)

    src = gf.read(path)
    folder = tempfile.mkdtemp(prefix="refquant-bench-")
    atexit.register(shutil.rmtree, folder, True)
    out_rq, out_py = os.path.join(folder, "rq.gguf"), os.path.join(folder, "py.gguf")

    def refquant_write():
        gf.write(out_rq, src.metadata, src.tensors.values(), metadata_types=src.metadata_types)

    reader = gguf.GGUFReader(path)

    def gguf_py_write():
        w = gguf.GGUFWriter(out_py, arch=None)  # keys copied below, general.architecture included
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
            w.add_key_value(key, field.contents(), vtype, sub_type=sub)
        for t in reader.tensors:
            w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.n_bytes, t.tensor_type)  # byte shape if quantized
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in reader.tensors:
            w.write_tensor_data(t.data)
        w.close()

    yield Case("gguf-file", "write SmolLM2 (94 MiB, fsync'd)", refquant_write, "gguf-py GGUFWriter", gguf_py_write,
               note="refquant also fsyncs and renames")
