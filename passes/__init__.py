"""Graph passes: each works on an onnx-graphsurgeon graph alone (no torch, no transformers)."""
