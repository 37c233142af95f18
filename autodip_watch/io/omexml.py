"""OME-XML: screened before it is parsed, parsed leniently, validated against the schema.

OME-XML is untrusted input: it is screened with defusedxml (no DTD, no entity
declarations, no external references) before ome-types or tifffile parse it. A document
that breaks the OME schema in small ways, as real acquisition software writes them, is
repaired value by value (``repair.py``) and each repair becomes a warning.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

from .errors import DimensionError, MalformedMetadataError, UnsafeMetadataError


#: Largest OME-XML document we parse.
MAX_XML_BYTES = 256 << 20


def screen_xml(text: str, source: str | Path) -> None:
    """Reject DTDs, entity declarations and external references without expanding them.

    Raises
    ------
    UnsafeMetadataError, MalformedMetadataError
    """
    from defusedxml import DefusedXmlException
    from defusedxml import ElementTree as SafeElementTree

    if len(text) > MAX_XML_BYTES:
        raise DimensionError(source, f"OME-XML is {len(text)} bytes, above the limit of {MAX_XML_BYTES}")
    try:
        root = SafeElementTree.fromstring(text, forbid_dtd=True, forbid_entities=True,
                                          forbid_external=True)
    except DefusedXmlException as error:
        raise UnsafeMetadataError(source, f"OME-XML declares a DTD, entities or external "
                                          f"references ({type(error).__name__}); refused "
                                          f"without expanding them") from None
    except SafeElementTree.ParseError as error:
        raise MalformedMetadataError(source, f"OME-XML is not well-formed XML: {error}") from None
    tag = root.tag.rsplit("}", 1)[-1]
    if tag != "OME":
        raise MalformedMetadataError(source, f"XML root element is <{tag}>, not <OME>")


def parse_ome_xml(text: str, source: str | Path, warnings_out: list[str] | None = None,
                  hints: Mapping[str, object] | None = None):
    """Screened, parsed OME model of ``text``; schema violations become warnings.

    Real acquisition software writes OME-XML that breaks the schema in small ways
    (Micro-Manager's ``Instrument ID="Microscope"``, ``PhysicalSizeX="0.0"``, enum values
    of newer schemas). A document that is not schema-valid is repaired value by value
    (:func:`autodip_watch.ome_repair.repair_tree`: out-of-range numbers dropped, unknown
    enum values mapped to ``Other``, invalid IDs made valid with their references) and
    each repair is recorded in ``warnings_out`` instead of refusing the file. ``hints``
    (``Type``, ``SizeX``, ``SizeY`` of the TIFF pages) repair required ``Pixels`` values.

    Raises
    ------
    UnsafeMetadataError, MalformedMetadataError, DimensionError
    """
    import ome_types

    from .repair import repair_tree

    screen_xml(text, source)
    notes = warnings_out if warnings_out is not None else []
    problem = schema_problem(text)
    if problem is None:
        try:
            return ome_types.from_xml(text, validate=False)
        except ImportError:
            raise
        except Exception as error:  # valid XML the model still refuses: repair it below
            problem = str(error).strip().splitlines()[0]
    if problem is not None:
        notes.append(f"OME-XML is not schema-valid ({problem}); parsed leniently")
    repairs: list[str] = []

    def repair(tree):
        repairs.extend(repair_tree(tree, hints))
        return tree

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ome = ome_types.from_xml(text, validate=False, transformations=[repair])
        notes.extend(repairs)
        notes.extend(str(w.message) for w in caught if "unclosed file" not in str(w.message))
        return ome
    except Exception as error:
        raise MalformedMetadataError(source, f"OME-XML cannot be read as an OME model: "
                                             f"{str(error).strip()[:500]}") from None


def schema_problem(text: str) -> str | None:
    """None when ``text`` is valid against the OME 2016-06 schema, else the first error.

    The compiled schema is cached (ome-types compiles it on every validating parse);
    documents of older schema versions go through ome-types, which upgrades them first.
    """
    import ome_types
    from lxml import etree

    try:
        root = etree.fromstring(text.encode("utf-8"))
    except etree.XMLSyntaxError as error:
        return str(error)
    if root.tag.startswith("{http://www.openmicroscopy.org/Schemas/OME/2016-06}"):
        error = schema_error(root)
        return None if error is None else f"line {error[0]}: {error[1]}"
    try:
        with _SCHEMA_LOCK:  # ome-types compiles its schemas with lxml too
            ome_types.from_xml(text, validate=True)
    except ImportError:
        raise
    except Exception as error:
        lines = str(error).strip().splitlines()
        return next((line.strip(" -") for line in lines[1:] if line.strip()), type(error).__name__)
    return None


def member_path(base: Path, file_name: str, source: Path) -> Path:
    """A file named by OME metadata, which must stay inside the metadata file's folder."""
    candidate = Path(file_name)
    if candidate.is_absolute() or not file_name.strip():
        raise UnsafeMetadataError(source, f"OME-XML names file {file_name!r}; only names "
                                          f"relative to its own folder are accepted")
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise UnsafeMetadataError(source, f"OME-XML names file {file_name!r} outside its folder")
    return base / candidate


#: lxml's compiled XMLSchema keeps its error log on the schema object, and compiling one
#: is not safe in two threads at once: the batching worker reads and writes files side
#: by side in threads, so every use of the shared schema holds this lock.
_SCHEMA_LOCK = threading.RLock()


@functools.cache
def _compiled_schema():
    from lxml import etree

    import ome_types

    return etree.XMLSchema(etree.parse(str(Path(ome_types.__file__).parent / "ome-2016-06.xsd")))


def ome_schema():
    """The OME 2016-06 XML Schema that ome-types ships, parsed once per process (an
    explicit cache: the schema never changes while the process runs). For one thread;
    validation in the project goes through :func:`schema_error`, which is thread-safe."""
    with _SCHEMA_LOCK:
        return _compiled_schema()


def schema_error(root) -> tuple[int, str] | None:
    """``(line, message)`` of the first error of the lxml element ``root`` against the
    OME 2016-06 schema, or None when it is valid. Safe from any thread (one validation
    at a time: the compiled schema and its error log are shared)."""
    with _SCHEMA_LOCK:
        schema = _compiled_schema()
        if schema.validate(root):
            return None
        error = schema.error_log[0]
        return error.line, error.message


