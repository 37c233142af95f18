"""Lenient OME reading as a kind: every constrained attribute of the OME model, given a
value the model rejects, is repaired or dropped with a warning, and the file is still
inspected and denoised.

The attributes are enumerated from ome-types' pydantic classes (tests/helpers/ome_kinds.py), not
from a hand list: every enum field, every bounded number, every ID and reference pattern,
every colour, of every class reachable from <OME>. Each case is written into an OME-TIFF
(generated: one 32x32 plane plus a minimal instance of the class holding the attribute),
and, for the real samples in ../shared/data/ome, into the samples' own OME-XML.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
from lxml import etree
from typer.testing import CliRunner

from helpers import ome_kinds
from autodip_watch.cli.app import app
from autodip_watch.io.omexml import ome_schema, schema_problem
from autodip_watch.io.reader import ImageFile
from autodip_watch.io.writer import OmeTiffWriter
from autodip_watch.io.omexml import parse_ome_xml
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import denoise_file
from autodip_watch.pipeline.plan import inspect_file
from autodip_watch.provenance import read_provenance

CASES = ome_kinds.constrained_cases()
SETTINGS = DenoiseSettings(iterations=2, depth=4, width="16", device="cpu")


def _mentions(warnings: list[str], case: ome_kinds.Case) -> bool:
    return any(case.attribute in w and (case.bad in w or repr(case.bad) in w) for w in warnings)


def test_the_enumeration_covers_every_kind_of_constraint():
    """The table is the model: hundreds of attributes over every category, including
    the ones the issue names (PhysicalSizeX > 0, AcquisitionMode, Detector ID)."""
    counts = collections.Counter(case.category for case in CASES)
    assert counts["enum"] > 90 and counts["bound"] > 60 and counts["id"] > 40
    assert counts["reference"] > 15 and counts["colour"] > 10 and counts["uuid"] >= 1
    ids = {case.id for case in CASES}
    for expected in ("Pixels.PhysicalSizeX=0", "Channel.AcquisitionMode=NotInTheVocabulary",
                     "Detector.ID=not a valid id", "DetectorSettings.ID=not a valid id",
                     "Pixels.SizeX=0", "Plane.TheZ=-1", "LightSourceSettings.Attenuation=-1"):
        assert expected in ids


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_constrained_attribute_is_read_with_a_warning(tmp_path, case):
    path = ome_kinds.write_case(tmp_path, case)
    xml = tifffile.TiffFile(path).pages.first.description
    if schema_problem(xml) is None:  # the value really is one the schema or model refuses
        with pytest.raises(Exception):
            ome_types.from_xml(xml, validate=False)
    images = inspect_file(path, SETTINGS)
    assert images and images[0]["pixels"]
    assert images[0]["shape"] == [32, 32] and images[0]["dtype"] == "uint16"
    assert _mentions(images[0]["warnings"], case), images[0]["warnings"]
    with ImageFile(path) as image:  # the repaired value is valid, not the bad one
        dumped = ome_types.to_xml(image.ome)
        assert f'{case.attribute}="{case.bad}"' not in dumped
        # what the writer would publish is schema-valid (it refuses anything else)
        writer = OmeTiffWriter(tmp_path / "out.ome.tif", image)
        assert ome_schema().validate(etree.fromstring(ome_types.to_xml(writer.ome).encode()))
        if case.category == "id":  # the old ID survives inside the new one, unless the
            # factory's element held a reference to nothing and was dropped for that
            assert "not_a_valid_id" in dumped or any(
                "names no element" in w for w in images[0]["warnings"])
        np.testing.assert_array_equal(image.read_series(0), tifffile.imread(path, is_ome=False))


def _denoise_subset() -> list[ome_kinds.Case]:
    """Per category, and per way of repairing (Other, dropped, unit, required Pixels
    values, dropped element), a few representative cases."""
    chosen = {}
    for case in CASES:
        kind = case.category
        if case.category == "enum":
            members = [m.value for m in _enum_of(case)]
            kind = ("units" if _enum_of(case).__name__.startswith("Units") else
                    "other" if "Other" in members else "no-other")
        key = (kind, case.cls.__name__ in ("Pixels", "Plane", "Channel", "TiffData"))
        chosen.setdefault(key, case)
    for name in ("Pixels.PhysicalSizeX=0", "Pixels.SizeX=0", "Pixels.Type=NotInTheVocabulary",
                 "Pixels.DimensionOrder=NotInTheVocabulary", "Plane.TheZ=-1",
                 "Detector.ID=not a valid id", "TiffData.IFD=-1"):
        chosen[name] = next(case for case in CASES if case.id == name)
    return list(chosen.values())


def _enum_of(case):
    import enum
    info = next(i for i in case.cls.model_fields.values()
                if (i.json_schema_extra or {}).get("name") == case.attribute)
    return next(k for k in ome_kinds._flatten(info.annotation)
                if isinstance(k, type) and issubclass(k, enum.Enum))


DENOISED = _denoise_subset()


@pytest.mark.slow
@pytest.mark.parametrize("case", DENOISED, ids=[case.id for case in DENOISED])
def test_denoise_succeeds_and_records_the_repair(tmp_path, case):
    path = ome_kinds.write_case(tmp_path, case)
    report = denoise_file(path, SETTINGS)
    assert _mentions(report.warnings, case)
    output = ome_types.from_tiff(report.output, validate=True)  # schema-valid output
    assert output.images[0].pixels.size_x == 32
    entries = read_provenance(report.output)[0]["entries"]
    recorded = [v for k, v in entries.items() if k.startswith("source.warning.")]
    assert int(entries["source.warnings"]) == len(recorded) == len(report.warnings)
    assert _mentions(recorded, case)


@pytest.mark.slow
def test_real_samples_every_present_attribute(shared_data):
    """Real OME-XML (OME specification samples, ome-types' Zeiss/Micro-Manager/Bio-Formats
    fake files): every constrained attribute whose element is present in a sample is
    corrupted; the sample is still parsed, with a warning naming it. Attributes on
    different elements are corrupted together (one parse per batch); a case whose
    warning is missing from its batch is tried alone before it counts as a failure."""
    # the 125 kB Micro-Manager document is left out here (its parse costs ~0.5 s); it is
    # read in test_metadata and test_inspect
    samples = sorted(p for p in (shared_data / "ome").rglob("*.ome.xml")
                     if p.stat().st_size < 64_000)
    assert samples, "no OME-XML samples in ../shared/data/ome"
    paths = ome_kinds.paths_from_ome()
    tried = 0
    problems = []
    for sample in samples:
        text = sample.read_text(encoding="utf-8")
        namespace = etree.fromstring(text.encode("utf-8")).tag.split("}")[0] + "}"
        if "2016-06" not in namespace:
            continue  # older schemas are upgraded by ome-types first; tested below
        present = []
        root = etree.fromstring(text.encode("utf-8"))
        for case in CASES:
            tag = paths[case.cls][-1].xml if paths[case.cls] else "OME"
            element = root if tag == "OME" else next(root.iter(namespace + tag), None)
            if element is not None and (element.get(case.attribute) is not None
                                        or case.category in ("enum", "bound")):
                present.append((tag, case))
        batches: list[list] = []
        for tag, case in present:
            batch = next((b for b in batches if tag not in {t for t, _ in b}), None)
            if batch is None:
                batch = []
                batches.append(batch)
            batch.append((tag, case))

        def parse(cases) -> list[str] | str:
            root = etree.fromstring(text.encode("utf-8"))
            for tag, case in cases:
                element = root if tag == "OME" else next(root.iter(namespace + tag))
                element.set(case.attribute, case.bad)
            notes: list[str] = []
            try:
                parse_ome_xml(etree.tostring(root, encoding="unicode"), sample, notes)
            except Exception as error:  # noqa: BLE001 - reported below
                return str(error)
            return notes

        for batch in batches:
            notes = parse(batch)
            for tag, case in batch:
                tried += 1
                if isinstance(notes, list) and _mentions(notes, case):
                    continue
                alone = parse([(tag, case)])
                if isinstance(alone, str) or not _mentions(alone, case):
                    problems.append(f"{sample.name} {case.id}: {alone if isinstance(alone, str) else 'no warning'}")
    assert tried > 200
    assert not problems, problems[:10]


def test_older_schema_sample_with_a_bad_value(shared_data):
    sample = shared_data / "ome" / "ome-model" / "2012-06" / "instrument.ome.xml"
    if not sample.exists():
        pytest.skip(f"{sample} not present")
    text = re.sub(r'(<\w*:?Channel [^>]*?)(/?>)', r'\1 AcquisitionMode="Lightsheet"\2',
                  sample.read_text(encoding="utf-8"), count=1)
    notes: list[str] = []
    ome = parse_ome_xml(text, sample, notes)
    assert any("AcquisitionMode" in n for n in notes)
    assert ome.images


# --------------------------------------------------------------------------- the instances

def _micro_manager(path: Path, detector_id: str, name_attr: str = "") -> None:
    xml = f'''<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
<Instrument ID="Microscope"><Detector ID="{detector_id}" {name_attr} Model="iXon" Type="EMCCD"/></Instrument>
<Image ID="Image:0" Name="snap"><InstrumentRef ID="Microscope"/>
<Pixels DimensionOrder="XYCZT" ID="Pixels:0" SizeC="1" SizeT="1" SizeX="32" SizeY="32" SizeZ="1"
 Type="uint16" PhysicalSizeX="0.0" PhysicalSizeY="0.108">
<Channel ID="Channel:0:0" Name="Cy5" SamplesPerPixel="1" AcquisitionMode="Lightsheet">
<DetectorSettings ID="{detector_id}" Binning="1x1"/></Channel>
<TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>'''
    plane = np.random.default_rng(3).poisson(300, (32, 32)).astype(np.uint16)
    tifffile.imwrite(path, plane, description=xml.encode(), metadata=None)


@pytest.mark.parametrize("detector_id", ["Left-EMCCD", "Multi Camera", "0", ""])
def test_repaired_ids_keep_their_names_and_references(tmp_path, detector_id):
    path = tmp_path / "mm.ome.tif"
    _micro_manager(path, detector_id)
    report = denoise_file(path, SETTINGS)
    output = ome_types.from_tiff(report.output, validate=True)
    detector = output.instruments[0].detectors[0]
    channel = output.images[0].pixels.channels[0]
    assert channel.detector_settings.id == detector.id  # reference rewritten consistently
    assert output.images[0].instrument_ref.id == output.instruments[0].id
    if detector_id.strip():
        assert detector_id.replace(" ", "_") in detector.id  # "Left-EMCCD" is still there
    assert detector.id != "Detector:0" or detector_id == "0"
    assert channel.acquisition_mode.value == "Other"  # from a newer vocabulary
    assert output.images[0].pixels.physical_size_x is None  # 0.0 dropped
    assert output.images[0].pixels.physical_size_y == pytest.approx(0.108)


def test_warnings_reach_inspect_text_json_and_status(tmp_path):
    from autodip_watch.daemon.queue import JobQueue

    path = tmp_path / "mm.ome.tif"
    _micro_manager(path, "Left-EMCCD")
    runner = CliRunner()
    text = runner.invoke(app, ["inspect", str(path)])
    assert text.exit_code == 0, text.output
    assert "PhysicalSizeX='0.0'" in text.output and "Left-EMCCD" in text.output
    as_json = runner.invoke(app, ["inspect", "--json", str(path)])
    warnings = json.loads(as_json.stdout)["images"][0]["warnings"]
    assert any("PhysicalSizeX" in w for w in warnings)
    assert any("AcquisitionMode='Lightsheet'" in w and "Other" in w for w in warnings)
    # status: the job's report as the daemon's worker stores it
    queue = JobQueue(tmp_path / "state")
    stat = path.stat()
    job = queue.enqueue(str(path), stat.st_size, stat.st_mtime_ns, "0" * 64)
    claimed = queue.claim("test")
    report = denoise_file(path, SETTINGS, out=tmp_path / "out.ome.tif")
    queue.finish(claimed.id, report.output, report.as_dict(), report.seconds, len(report.planes))
    queue.close()
    status = runner.invoke(app, ["status", "--state-dir", str(tmp_path / "state"), "--json"])
    recent = json.loads(status.stdout)["recent"]
    assert any("PhysicalSizeX" in w for w in recent[0]["warnings"])
    shown = runner.invoke(app, ["status", "--state-dir", str(tmp_path / "state")])
    assert "PhysicalSizeX" in shown.output
    del job


def test_case_01_zero_pixel_size(tmp_path):
    """The shared case 01 itself (PhysicalSizeX/Y="0.0"): read and denoised, sizes dropped."""
    case = Path(__file__).resolve().parents[2] / "shared" / "cases" / "case-01"
    if not case.is_dir():
        pytest.skip(f"{case} not present")
    shutil.copytree(case, tmp_path / "case-01")
    shutil.copytree(case.parent / "lib", tmp_path / "lib")
    import subprocess
    import sys
    subprocess.run([sys.executable, "make.py"], cwd=tmp_path / "case-01", check=True)
    report = denoise_file(tmp_path / "case-01" / "zero-pixelsize.ome.tif", SETTINGS)
    assert any("PhysicalSizeX='0.0'" in w for w in report.warnings)
    assert ome_types.from_tiff(report.output, validate=True).images[0].pixels.physical_size_x is None
