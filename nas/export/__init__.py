"""Stand-alone models: a deployed network as a plain-torch .py file, TorchScript, torch.export
(.pt2) and ONNX, each checked against the toolkit's own output, with a model card beside them."""

# here, not in formats.py: the command lines check --export before anything heavy is imported
# (a Ctrl-C during torch's import, before the stop handler is set, leaves numpy half-imported)
FORMATS = ("py", "torchscript", "pt2", "onnx")
