"""A trained model outside training: the MLflow pyfunc, ONNX export and its parity check, predictions on files.

- :mod:`.pyfunc`: the detector as an MLflow pyfunc model (logged "as code"; imports only ``codetr``)
- :mod:`.onnx`: the deployable model as an ONNX graph, checked against PyTorch with onnxruntime
- :mod:`.predictors`: a :class:`codetr.inference.Predictor` from a checkpoint or a deployable file
- :mod:`.predict`: detections on image files (``python -m platform.predict``)
"""
