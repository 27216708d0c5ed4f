"""The onnx2tf back end: onnx2tf (any interpreter) makes the files; they are judged like ours."""
