"""attributions.parquet: the per-sample SHAP values `explain` streams, one row group per chunk."""

from __future__ import annotations

from pathlib import Path


class AttributionWriter:
    """Streams SHAP chunks to a Parquet file (float32 genes); pass it as ``on_chunk`` to the explain step.

    Rows are sample-major, then class, so a sample's classes are adjacent. Columns: ``sample_id``,
    ``class``, ``base_value``, ``model_output``, then one float32 column per explained gene.

    Parameters
    ----------
    path : str or Path
        The file to write (inside a staging directory: see :func:`iml_genomics.io.staged_output`).
    sample_ids : list of str
        The cohort's samples, in the order the chunks cover them.
    """

    def __init__(self, path: str | Path, sample_ids):
        self.path, self.sample_ids = Path(path), list(sample_ids)
        self.writer = None
        self.schema = None

    def set_sample_ids(self, sample_ids) -> None:
        """The ids of the rows explained, when the step explains a subsample of the cohort (explain.max_samples);
        called before the first chunk."""
        if self.writer is not None:
            raise RuntimeError("sample ids changed after the first chunk was written")
        self.sample_ids = list(sample_ids)

    def __call__(self, chunk, plan):
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, q, k = chunk.values.shape
        if self.writer is None:
            fields = [pa.field("sample_id", pa.string()), pa.field("class", pa.string()),
                      pa.field("base_value", pa.float64()), pa.field("model_output", pa.float64())]
            fields += [pa.field(g, pa.float32()) for g in plan.gene_ids]
            self.schema = pa.schema(fields)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
            self.outputs = plan.outputs
        ids = np.repeat(np.asarray(self.sample_ids[chunk.start:chunk.stop], dtype=object), k)
        cls = np.tile(np.asarray(self.outputs, dtype=object), n)
        vals = chunk.values.transpose(0, 2, 1).reshape(n * k, q).astype(np.float32)
        cols = [pa.array(ids, pa.string()), pa.array(cls, pa.string()),
                pa.array(chunk.base_values.reshape(-1)), pa.array(chunk.model_output.reshape(-1))]
        cols += [pa.array(vals[:, j]) for j in range(q)]
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self) -> None:
        """Finish the file; when no chunk came (permutation only), write an empty table with the fixed
        leading columns so the output file set does not depend on the method."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is not None:
            self.writer.close()
            return
        pq.write_table(pa.table({"sample_id": pa.array([], pa.string()), "class": pa.array([], pa.string()),
                                 "base_value": pa.array([], pa.float64()),
                                 "model_output": pa.array([], pa.float64())}),
                       self.path, compression="zstd")
