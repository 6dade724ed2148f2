"""Data: record schema and readers, safe image loading, instruction templates, synthetic shapes."""

from vlmtune.data.errors import DataError, ErrorLog
from vlmtune.data.records import (
    REQUIRED_FIELDS,
    RecordDataset,
    load_records,
    read_jsonl,
    read_llava_json,
    read_records,
    validate_record,
)
from vlmtune.data.shapes import generate_shapes, parse_data_spec, shapes_dataset

__all__ = [
    "REQUIRED_FIELDS",
    "DataError",
    "ErrorLog",
    "RecordDataset",
    "generate_shapes",
    "load_records",
    "parse_data_spec",
    "read_jsonl",
    "read_llava_json",
    "read_records",
    "shapes_dataset",
    "validate_record",
]
