"""Models: the classifier and its head, weights, and cnnlab's own architectures.

Importing this package registers cnnlab's own architectures (own.py) with timm, so that
``timm.create_model("nasnet_mobile")`` works.
"""

from cnnlab.models import own  # noqa: F401 - registers nasnet_mobile and cifar_fastnet with timm
