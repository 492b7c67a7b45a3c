"""Writing bundles: ``writer.write_bundle``, with each hash function's ONNX graph exported by its encoder.

The bundle format itself (manifest, verifying reader, serving-side featurizers) is the shared contract
in ``index.bundle``; training imports it from there and serving never imports this package.
"""
