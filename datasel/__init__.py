"""datasel: a declarative pipeline that picks the training data worth training on."""

__version__ = "0.1.0"
