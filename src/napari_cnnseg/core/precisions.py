"""The one precision table (names only, no torch import: the CLI parsers read it).

``PRECISION_CHOICES``: what inference accepts ("auto" probes the fastest exact-enough one).
``TRAIN_PRECISION_CHOICES``: what training and the docks offer (training autocasts to bf16
only: fp16 would need loss scaling). What each name means on a device: ``core.devices``.
"""

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
TRAIN_PRECISION_CHOICES = ("auto", "fp32", "bf16")
