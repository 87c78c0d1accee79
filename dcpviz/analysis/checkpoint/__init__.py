"""Tables and checks of a checkpoint on disk: ``tables`` (a DCP directory), ``hf_tables`` and
``hf_checks`` (a Hugging Face safetensors folder)."""
