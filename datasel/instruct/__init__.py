"""Instruction data for causal LMs: the three role files and their formats (Alpaca, chat messages, ShareGPT,
prompt/completion), the generated task families of the embedded experiment, the LM and its LoRA adapters, and the
target-alone baseline. The selection chain runs on it as on any data (``data.source: instruct``)."""
