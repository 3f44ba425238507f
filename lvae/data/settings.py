"""What a run's data is: the `data` node of its config (configs/data/<name>.yaml), typed.

The run's schema (lvae/run/config.py) holds it and checks which values fit together;
the loaders and ImageData read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lvae.data.files import default_data_root

INTENSITY_SCALES = (255, 256)  # data.intensity_scale: grey level / scale = Bernoulli probability (docs/datasets.md)


@dataclass
class DataConfig:
    name: str = "mnist"  # one of lvae.data.DATASETS
    root: str = field(default_factory=default_data_root)  # the folder that holds the datasets
    download: bool = True
    binarize: bool = True
    binarization_seed: int = 0  # the test set is binarized (or dequantized) once, with this seed
    dequantize: bool = False  # x = (pixel + u) / 256, u ~ U(0,1) fresh each batch: continuous data, bits/dim
    merge_valid: bool = False  # binarized_mnist: train on train+valid (60,000) instead of train (50,000)
    train_subset: Optional[int] = None  # first N training images (None = all)
    # 8-bit grey level / intensity_scale = the Bernoulli probability: 255 (torchvision, Burda et al.) or 256 (the
    # LVAE authors' data, where a fully-on pixel is 0.996); dequantized pixels are (pixel + u) / 256 either way.
    intensity_scale: int = INTENSITY_SCALES[0]
