"""Offline compression of a DONUT teacher into a smaller, sparser DONUT-hole student.

Subject modules: ``student`` (layer selection and weight copy), ``distill`` (loss functions), ``prune``
(importance, schedules, masks), ``cka`` (representation similarity), ``metrics`` (DONUT's field F1 and
tree-edit-distance accuracy), ``train`` (the training loop) and ``report`` (report.json / report.md).
"""
