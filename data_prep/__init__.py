"""Scripts that turn public dataset files (in their published formats) into vlmtune JSONL."""
