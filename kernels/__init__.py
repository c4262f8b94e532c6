"""Fused ops for memrl's backbones, each in its own folder beside its pure-PyTorch reference.

Imports nothing else of memrl's. Each op exposes one public function with
`impl="auto" | "triton" | "naive"` (plus, where it exists, "parallel": a log-depth torch
version used on the CPU).
"""
