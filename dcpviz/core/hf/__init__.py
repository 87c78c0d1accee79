"""Hugging Face files read without torch: safetensors headers (bounded, no pickle) and what a
folder of them holds (config, index, shards)."""
