"""Checkpoint formats, one module each: hf (Hugging Face), meta (Meta's consolidated shards),
native (this project's). Each reads its config into ModelArgs and its tensors into the one
internal layout; engine.checkpoints picks the format and builds the model."""
