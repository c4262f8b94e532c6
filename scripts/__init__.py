"""Studies and benchmarks: backbone comparisons, the Atari100k suite, timing scripts."""
