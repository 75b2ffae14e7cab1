"""The checks a documentation zip passes before it is stored (app/services/docs.py)."""

from __future__ import annotations

import io
import zipfile

import pytest

from app.services.docs import InvalidDocs, inspect_zip
from tests.builders import zip_bytes
from tests.web.helpers import docs_zip

LIMITS = {"max_bytes": 1 << 20, "max_files": 100}


def test_inspect_zip_strips_a_single_top_folder_and_counts() -> None:
    info = inspect_zip(io.BytesIO(docs_zip()), **LIMITS)

    assert info.path_prefix == "html/"
    assert info.entry_count == 4
    assert info.uncompressed_bytes > 0


def test_inspect_zip_refuses_encrypted_members() -> None:
    data = bytearray(zip_bytes({"index.html": b"x"}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" flag bit in the central directory entry (APPNOTE 4.4.4).
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1

    with pytest.raises(InvalidDocs, match="encrypted"):
        inspect_zip(io.BytesIO(bytes(data)), **LIMITS)
