"""Stand-alone models: a deployed network as a plain-torch .py file, TorchScript, torch.export
(.pt2) and ONNX, each checked against the toolkit's own output, with a model card beside them."""
