"""Reinforcement learning with verifiable rewards and the prompt curricula that drive it.

``prompts`` builds prompt sets (arithmetic generator, math-format files, HF datasets); ``answers`` checks completions;
``policy`` wraps a char-level TinyGPT or a Hugging Face causal LM behind one interface; ``warmstart`` gives the
policy partial accuracy; ``grpo`` trains it; ``samplers`` holds CurES and its baselines; ``loop`` runs the
estimate → allocate → train iterations and writes the tables.
"""
