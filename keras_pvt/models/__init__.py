"""Model families: each folder holds a backbone, its classifier and its preprocessing.

Checkpoint tables, presets and the family registry live in `keras_pvt.convert`.
"""
