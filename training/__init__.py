"""Offline side of the product: datasets, featurizers, hashing trainers, evaluation, model bundles.

Importing this package is cheap (no torch): the service imports the bundle reader from here.
"""
