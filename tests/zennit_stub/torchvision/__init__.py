"""Stand-in for torchvision, whose wheel on the package index is a CUDA build that does not import beside
the CPU torch. zennit needs two block classes (for its ResNet canonizer) at import time, lxt the ViT
module; timm and ultralytics (tests/modern) import a few names of ops, transforms, datasets, io and utils
that building and running their models never uses: those modules answer every name with a placeholder
class (torchvision/_stand_in.py) that refuses to be instantiated. It has no package metadata, so that
transformers does not take torchvision for installed."""
