"""PyTorch replicas of the judges' original models (torchvision is not installable here), written
from the published architectures; the parity tests and the benchmarks compare against them."""
