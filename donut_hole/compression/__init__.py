"""Offline compression of a DONUT teacher into a smaller, sparser DONUT-hole student.

Subject modules: ``recipe`` (the configuration types, read from one YAML per run), ``student`` (layer
selection and weight copy), ``distill`` (loss functions), ``prune`` (importance, schedules, masks),
``vocab`` (vocabulary pruning), ``cka`` (representation similarity), ``train`` (the training loop),
``teacher`` and ``compress`` (the two runs) and ``report`` (report.json / report.md). DONUT's metrics and
dataset format are in :mod:`donut_hole.evaluation`, below this package and serving alike.
"""
