"""Type stubs for graft (the module's documentation is in graft/__init__.py)."""

import os
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

PathLike = Union[str, os.PathLike[str]]
Images = Union[PathLike, Sequence[PathLike], Sequence[bytes], bytes]
Skipped = List[Tuple[str, str]]

__version__: str
DEFAULT_BACKBONE: str
IMAGE_EXTENSIONS: Tuple[str, ...]

class GraftError(Exception):
    """graft's error: the message names the file and says what to do."""

def extract(
    images: Images,
    backbone: str = ...,
    *,
    cache: bool = ...,
    bottleneck_dir: PathLike | None = ...,
    batch_size: int | None = ...,
    engine: str = ...,
    names: Sequence[str] | None = ...,
) -> Tuple[npt.NDArray[np.float32], List[str], Skipped]: ...
def train(
    image_dir: PathLike | None = ...,
    output: PathLike = ...,
    *,
    labels: PathLike | None = ...,
    images: PathLike | None = ...,
    backbone: str = ...,
    bottleneck_dir: PathLike | None = ...,
    how_many_training_steps: int = ...,
    learning_rate: float = ...,
    train_batch_size: int = ...,
    eval_step_interval: int = ...,
    validation_batch_size: int = ...,
    test_batch_size: int = ...,
    validation_percentage: float = ...,
    testing_percentage: float = ...,
    optimizer: str = ...,
    weight_decay: float = ...,
    seed: int = ...,
    summaries_dir: PathLike | None = ...,
    intermediate_store_frequency: int = ...,
    intermediate_output_dir: PathLike | None = ...,
    batch_size: int | None = ...,
    flip_left_right: bool = ...,
    random_crop: float = ...,
    random_scale: float = ...,
    random_brightness: float = ...,
    distortion_mode: str = ...,
    distorted_variants: int = ...,
) -> Dict[str, Any]: ...

class Model:
    @classmethod
    def load(cls, bundle: PathLike) -> Model: ...
    @property
    def labels(self) -> List[str]: ...
    @property
    def backbone(self) -> str: ...
    def predict(
        self, images: Images, k: int = ..., *, batch_size: int | None = ...
    ) -> List[Tuple[List[str], List[float]]]: ...
