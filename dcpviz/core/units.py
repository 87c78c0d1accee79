"""Units and number formats shared by tables, views, the report and the terminal (no torch)."""

from __future__ import annotations

from dcpviz.core.errors import TraceFileError

# Bytes per element of every dtype torch 2.13 names (``torch.<name>.itemsize``), so tables can
# size a trace's tensors without importing torch; tests/test_core.py compares it with torch.
ITEMSIZE: dict[str, int] = {
    "bfloat16": 2,
    "bit": 1,
    "bits16": 2,
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
    "bits8": 1,
    "bool": 1,
    "cdouble": 16,
    "cfloat": 8,
    "chalf": 4,
    "complex128": 16,
    "complex32": 4,
    "complex64": 8,
    "double": 8,
    "float": 4,
    "float16": 2,
    "float32": 4,
    "float4_e2m1fn_x2": 1,
    "float64": 8,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "half": 2,
    "int": 4,
    "int1": 1,
    "int16": 2,
    "int2": 1,
    "int3": 1,
    "int32": 4,
    "int4": 1,
    "int5": 1,
    "int6": 1,
    "int64": 8,
    "int7": 1,
    "int8": 1,
    "long": 8,
    "qint32": 4,
    "qint8": 1,
    "quint2x4": 1,
    "quint4x2": 1,
    "quint8": 1,
    "short": 2,
    "uint1": 1,
    "uint16": 2,
    "uint2": 1,
    "uint3": 1,
    "uint32": 4,
    "uint4": 1,
    "uint5": 1,
    "uint6": 1,
    "uint64": 8,
    "uint7": 1,
    "uint8": 1,
}


def itemsize(dtype_name: str) -> int:
    """Bytes per element of the dtype a trace names ('float32'); an unknown name (a corrupt
    trace, or one from a torch with more dtypes) is a TraceFileError, also a ValueError."""
    size = ITEMSIZE.get(dtype_name) if isinstance(dtype_name, str) else None
    if size is None:
        raise TraceFileError(
            f"unknown dtype {dtype_name!r}: torch 2.13 has no such dtype. The trace is corrupt or "
            "was written with another torch; re-create it with this one."
        )
    return size


def fmt_bytes(n: float) -> str:
    """A byte count for people: '512 B', '1.5 KB', ... '3.0 TB' (powers of 1024)."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
