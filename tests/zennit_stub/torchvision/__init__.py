"""Stand-in for torchvision, which has no CPU build here: zennit only needs the two block classes
(for its ResNet canonizer) to exist at import time."""
