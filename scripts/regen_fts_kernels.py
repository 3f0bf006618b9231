"""Regenerate iml_genomics/explain/_fts_kernels.py from iml_genomics/explain/_fts_codegen.py.

Usage: PYTHONPATH=. python scripts/regen_fts_kernels.py  (tests/test_fts_kernels.py checks the file is current)
"""

from pathlib import Path

from iml_genomics.explain._fts_codegen import kernel_source

path = Path(__file__).resolve().parent.parent / "iml_genomics" / "explain" / "_fts_kernels.py"
path.write_text(kernel_source())
print(f"wrote {path}")
