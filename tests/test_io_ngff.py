"""NGFF metadata: label classes are checked where they are made."""

from __future__ import annotations

import pytest

from slideseg.errors import ConfigError
from slideseg.io.ngff import LabelClass


def test_bad_label_class() -> None:
    with pytest.raises(ConfigError, match=r"value 256; expected 0-255"):
        LabelClass(256, "x", (0, 0, 0, 0))
    with pytest.raises(ConfigError, match=r"four integers 0-255"):
        LabelClass(1, "x", (0, 0, 300, 0))
    assert LabelClass(255, "x", (0, 0, 255, 0)).value == 255  # the limits themselves are fine
