from typing import Any, List, Optional

import pyarrow as pa

FILE_EXTENSIONS: List[str]

def features_schema(backbone: str, weights_sha256: str, dim: int) -> pa.Schema: ...

class GraftExtractor:
    def __init__(
        self,
        root: str,
        backbone: str = ...,
        *,
        engine: str = ...,
        batch_size: Optional[int] = ...,
        cache: bool = ...,
        bottleneck_dir: Optional[str] = ...,
        rss_dir: Optional[str] = ...,
    ) -> None: ...
    def __call__(self, batch: Any) -> pa.Table: ...
