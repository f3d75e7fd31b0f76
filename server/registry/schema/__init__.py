"""OpenAPI v3 schemas: the built-in kinds' (``builtins``), structural-schema semantics (``structural``:
pruning, defaulting, validation) and how writes treat unknown fields (``fieldvalidation``)."""
