"""Inference: a run loaded once (loaded.py) and the one engine that turns texts into logits (engine.py),
for predict, evaluate, serve and the export checks."""
