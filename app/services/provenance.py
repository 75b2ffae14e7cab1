"""PEP 740 provenance: check uploaded attestations against their file; the object served."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.upstream_client import UpstreamClient, iter_raw
from app.data.models import File, FileProvenance, Project

if TYPE_CHECKING:
    from pypi_attestations import Attestation

log = logging.getLogger(__name__)

MIME_PROVENANCE = "application/vnd.pypi.integrity.v1+json"  # PEP 740's provenance object
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"  # in-toto v1 Statement (PEP 740 envelope)
MAX_PROVENANCE_BYTES = 4 << 20  # 4 MiB: an attestation is a few KiB
MAX_ATTESTATIONS = 16  # PEP 740 names two kinds; a few of each is plenty
# Uploads carry no Trusted Publisher login here: the bundle names the pyshelf account that
# uploaded the file (PEP 740 requires a `publisher` with a `kind`; `claims` is free-form).
PUBLISHER_KIND = "pyshelf-account"


class InvalidAttestation(ValueError):
    """An uploaded attestation is malformed or does not describe the uploaded file."""


def _statement(attestation: Attestation, number: int) -> dict[str, Any]:
    try:
        statement = json.loads(attestation.envelope.statement)
    except ValueError:
        raise InvalidAttestation(
            f"Attestation {number}: the envelope's statement is not JSON (PEP 740)."
        ) from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise InvalidAttestation(
            f"Attestation {number}: the statement is not an in-toto v1 Statement (PEP 740)."
        )
    return statement


def _check_statement(statement: dict[str, Any], number: int, filename: str, sha256: str) -> None:
    """The checks `Attestation.verify` makes on the statement, short of its signature."""
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise InvalidAttestation(
            f"Attestation {number}: the statement must have exactly one subject (PEP 740)."
        )
    subject = subjects[0]
    if subject.get("name") != filename:
        raise InvalidAttestation(
            f"Attestation {number}: its subject {str(subject.get('name'))[:80]!r} is not the "
            f"uploaded file {filename}."
        )
    digest = subject.get("digest")
    if not isinstance(digest, dict) or digest.get("sha256") != sha256:
        raise InvalidAttestation(
            f"Attestation {number}: its subject's sha256 does not match the uploaded file "
            f"{filename} (sha256 {sha256})."
        )
    predicate_type = statement.get("predicateType")
    supported = supported_predicates()
    if predicate_type not in supported:
        raise InvalidAttestation(
            f"Attestation {number}: unsupported predicate type {str(predicate_type)[:80]!r}; "
            f"expected one of {', '.join(sorted(supported))} (PEP 740)."
        )


# pypi_attestations brings sigstore, pydantic and boto3 along: about 55 MiB in every worker
# that imports it. Only an upload with attestations or a mirrored provenance object needs it,
# so it is imported on first use (the functions below), not when the server starts.


@functools.cache
def supported_predicates() -> frozenset[str]:
    """PEP 740's predicate types, as pypi-attestations knows them."""
    from pypi_attestations import AttestationType  # imported on first use: see above

    return frozenset(kind.value for kind in AttestationType)


def check_attestations(raw: str, filename: str, sha256: str) -> list[dict[str, Any]]:
    """Parse the `attestations` upload field and check each against the file; return them.

    Offline, the signature, its certificate chain and the transparency log entry are not
    verified (that needs Sigstore's trust root): docs/security.md says how to verify them.
    """
    try:
        items = json.loads(raw)
    except ValueError:
        raise InvalidAttestation(
            "The 'attestations' field is not JSON: expected a list of attestation objects "
            "(PEP 740)."
        ) from None
    if not isinstance(items, list) or not items:
        raise InvalidAttestation(
            "The 'attestations' field must be a non-empty JSON list of attestation objects "
            "(PEP 740)."
        )
    if len(items) > MAX_ATTESTATIONS:
        raise InvalidAttestation(
            f"Too many attestations: {len(items)}; at most {MAX_ATTESTATIONS} per file."
        )
    for number, item in enumerate(items, start=1):
        _check_attestation(item, number, filename, sha256)
    return items  # as uploaded: a re-encoding of their base64 fields would differ


def _check_attestation(item: object, number: int, filename: str, sha256: str) -> None:
    from pydantic import ValidationError  # imported on first use with pypi_attestations
    from pypi_attestations import Attestation  # imported on first use: see above

    try:
        attestation = Attestation.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "object"
        raise InvalidAttestation(
            f"Attestation {number} is malformed: {where}: {first['msg']} (PEP 740)."
        ) from None
    _check_statement(_statement(attestation, number), number, filename, sha256)


def check_provenance(data: bytes, filename: str, sha256: str) -> dict[str, Any]:
    """An upstream's provenance object, checked as uploads are: its shape, and every attestation
    against the file the mirror lists (name and sha256)."""
    try:
        document = json.loads(data)
    except ValueError:
        raise InvalidAttestation("the provenance object is not JSON (PEP 740).") from None
    if not isinstance(document, dict):
        raise InvalidAttestation("the provenance object is not a JSON object (PEP 740).")
    bundles = document.get("attestation_bundles")
    if document.get("version") != 1 or not isinstance(bundles, list) or not bundles:
        raise InvalidAttestation("not a version 1 provenance object with bundles (PEP 740).")
    number = 0
    for bundle in bundles:
        publisher = bundle.get("publisher") if isinstance(bundle, dict) else None
        attestations = bundle.get("attestations") if isinstance(bundle, dict) else None
        if not isinstance(publisher, dict) or not isinstance(publisher.get("kind"), str):
            raise InvalidAttestation("a bundle's publisher has no kind (PEP 740).")
        if not isinstance(attestations, list) or not attestations:
            raise InvalidAttestation("a bundle has no attestations (PEP 740).")
        for item in attestations:
            number += 1
            _check_attestation(item, number, filename, sha256)
    return document


def fetch_provenance(
    upstream: UpstreamClient, url: str, simple_url: str | None, filename: str, sha256: str
) -> dict[str, Any]:
    """Fetch and check an upstream file's provenance object (raises UpstreamError or
    InvalidAttestation); it goes through the mirror's upstream client like the file itself."""
    response = upstream.open_file(url, simple_url=simple_url)
    with contextlib.closing(response):
        data = bytearray()
        for chunk in iter_raw(response):
            data += chunk
            if len(data) > MAX_PROVENANCE_BYTES:
                raise InvalidAttestation(
                    f"the provenance object is over {MAX_PROVENANCE_BYTES} bytes."
                )
    return check_provenance(bytes(data), filename, sha256)


def mirrored_provenance_path(index_path: str, entry: dict[str, Any]) -> str | None:
    """Where a mirror serves an upstream file's provenance: only for a file listed with its
    sha256, which the attestations are checked against."""
    if not entry.get("provenance") or not entry.get("sha256"):
        return None
    return provenance_path(index_path, entry["sha256"], entry["filename"])


def provenance_object(attestations: list[dict[str, Any]], uploader: str) -> dict[str, Any]:
    """PEP 740's provenance object: one bundle, published by the uploading account."""
    publisher = {"kind": PUBLISHER_KIND, "claims": {"username": uploader}}
    return {
        "version": 1,
        "attestation_bundles": [{"publisher": publisher, "attestations": attestations}],
    }


def provenance_path(index_path: str, sha256: str, filename: str) -> str:
    """The URL path (below the site root) of a file's provenance object (PEP 740)."""
    return f"{index_path}/+provenance/{sha256}/{quote(filename)}"


def attested_files(session: Session, project_id: int) -> set[int]:
    """The ids of a project's files that were uploaded with attestations."""
    return set(
        session.scalars(
            select(FileProvenance.file_id)
            .join(File, File.id == FileProvenance.file_id)
            .where(File.project_id == project_id)
        )
    )


def copy_provenance(session: Session, source_id: int, copy_id: int) -> None:
    """Give a promoted copy of a file the provenance of its original, if it has one."""
    original = session.get(FileProvenance, source_id)
    if original is not None:
        session.add(FileProvenance(file_id=copy_id, provenance=original.provenance))


def hosted_provenance(
    session: Session, index_id: int, sha256: str, filename: str
) -> dict[str, Any] | None:
    """The provenance object of a file uploaded to the index, or None without one."""
    return session.scalar(
        select(FileProvenance.provenance)
        .join(File, File.id == FileProvenance.file_id)
        .join(Project, Project.id == File.project_id)
        .where(Project.index_id == index_id, File.sha256 == sha256, File.filename == filename)
    )
