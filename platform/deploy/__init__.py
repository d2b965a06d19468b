"""A trained model outside training: the MLflow pyfunc, ONNX export and its parity check, predictions on files.

- :mod:`.pyfunc`: the detector as an MLflow pyfunc model (logged "as code"; imports only ``codetr``)
- :mod:`.onnx`: the deployable model as an ONNX graph of any input size, checked against PyTorch with onnxruntime
- :mod:`.onnx_sizes`: the graph against PyTorch at several sizes and batches; onnxslim; its inputs and outputs
- :mod:`.postprocess`: Co-DINO's soft-NMS in NumPy, shipped next to an exported model
- :mod:`.predictors`: a :class:`codetr.inference.Predictor` from a checkpoint or a deployable file
- :mod:`.predict`: inputs (files, folders, globs, videos) and backends (PyTorch, onnxruntime) of ``python -m platform.predict``
"""
