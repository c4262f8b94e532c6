"""Batched memory POMDPs (torch, any device) and adapters; imports nothing else of memrl's."""
