"""Writing bundles: ``writer.write_bundle`` and the ONNX graphs of the trainers' hash functions (``onnx_graphs``).

The bundle format itself (manifest, verifying reader, serving-side featurizers) is the shared contract
in ``index.bundle``; training imports it from there and serving never imports this package.
"""
