"""Development and test backends that are not part of the product (``python -m examples.backends``)."""
