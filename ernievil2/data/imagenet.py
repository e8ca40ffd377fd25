"""The ImageNet normalisation every tower here was trained with (RGB, in [0, 1] units).

A module of its own so that the config defaults and the image transforms can
both read it without importing each other.
"""
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
