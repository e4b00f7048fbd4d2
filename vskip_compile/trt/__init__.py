"""TensorRT: the static compatibility lint, optimization profiles and engine builds.

Only the builder and the engine runner need TensorRT (through Polygraphy); the lint and
the profile derivation run anywhere.
"""
