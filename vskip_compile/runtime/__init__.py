"""The runtime: image and prompt to text on the exported graphs (`vskip generate`)."""
