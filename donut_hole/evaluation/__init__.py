"""Below both halves: DONUT's dataset format, DONUT-exact metrics, and scoring a reader on a dataset.

- :mod:`.dataset`: ``read_dataset`` of a folder of images + ``metadata.jsonl`` (DONUT's format).
- :mod:`.metrics`: field F1 and tree-edit-distance accuracy exactly as DONUT's ``JSONParseEvaluator``.
- :mod:`.evaluate`: ``evaluate_reader`` runs a :class:`~donut_hole.model.predict.DonutReader` over samples.

Compression (training, the report), serving (the demo's accuracy line) and the CLI use these; they import
only :mod:`donut_hole.model`, never either half.
"""
