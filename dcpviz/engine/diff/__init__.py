"""Two checkpoints (DCP or safetensors) or traces side by side: open one side (``source``), read
its chunks safely in bounded memory (``chunk_reader``), compare their values (``values``)."""
