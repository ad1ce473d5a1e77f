"""Hugging Face Llama format: export a checkpoint, import one, and the mapping between them.

- `layout.py`: our parameter names and shapes <-> `LlamaForCausalLM` tensor names and shapes,
  and `config.json` <-> our model config (pure functions on numpy arrays and dicts).
- `tokenizer.py`: our SentencePiece tokenizer as a `tokenizers` `tokenizer.json` that encodes
  text to the same ids.
- `safetensors_io.py`: reading and writing (sharded) safetensors folders one tensor at a time.
- `export.py`: a workdir's checkpoint -> a Hugging Face folder (`tools/export_hf.py`).
- `importer.py`: a Hugging Face folder -> a step-0 checkpoint that training resumes from
  (`tools/import_hf.py`).

Everything here needs the `hf` extra (`safetensors`, `tokenizers` via `transformers`); nothing
needs torch. See docs/huggingface.md.
"""
