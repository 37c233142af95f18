"""Per-channel microscope and specimen inference: sources, precedence, policy, configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ome_types import model

from autodip_watch.settings.base import ConfigError
from autodip_watch.settings.inference import InferenceSettings
from autodip_watch.metadata.labels import (ACQUISITION_MODES, NON_FLUORESCENCE, POLICY_COPY, POLICY_DENOISE)
from autodip_watch.metadata.rules import DEFAULT_RULES, FolderDefaults, InferenceRules, LabelRule
from autodip_watch.metadata.context import ChannelContext, LightSourceHint, channel_contexts
from autodip_watch.metadata.infer import infer_channel, infer_channels, infer_image
from autodip_watch.io.reader import ImageFile
from autodip_watch.transfer.table import CalibrationTable
from helpers.omefiles import ome_model, structured, write_ome_tiff


def one_channel_ome(instrument=None, **channel) -> model.OME:
    ome = ome_model("YX", (8, 8), np.uint8, file_name="x.ome.tif", channels=[channel],
                    instrument=instrument)
    return ome


def infer_ome(ome: model.OME, path: Path | None = None, **options):
    context = channel_contexts(ome, 0, 1, 1, path or Path("/data/plain/x.ome.tif"))[0]
    return infer_channel(context, **options)


# --------------------------------------------------------------------------- microscope

@pytest.mark.parametrize("mode, label", [
    ("LaserScanningConfocalMicroscopy", "confocal"), ("SpinningDiskConfocal", "confocal"),
    ("SlitScanConfocal", "confocal"), ("SweptFieldConfocal", "confocal"),
    ("WideField", "widefield"), ("MultiPhotonMicroscopy", "two-photon"),
    ("TotalInternalReflection", "tirf"), ("SPIM", "light-sheet"),
    ("FluorescenceLifetime", "flim"), ("BrightField", "brightfield"),
])
def test_acquisition_mode(mode, label):
    group = infer_ome(one_channel_ome(acquisition_mode=mode))
    assert group.microscope == label
    assert f"AcquisitionMode={mode}" in group.evidence[0]
    assert group.policy == (POLICY_COPY if label in NON_FLUORESCENCE else POLICY_DENOISE)


def test_every_ome_acquisition_mode_has_a_label():
    assert set(ACQUISITION_MODES) == {m.value for m in model.Channel_AcquisitionMode}


def instrument(*, lasers=(), arcs=(), leds=(), detectors=()) -> model.Instrument:
    return model.Instrument(id="Instrument:0", lasers=list(lasers), arcs=list(arcs),
                            light_emitting_diodes=list(leds), detectors=list(detectors))


def test_pulsed_ti_sapphire_with_pmt_is_two_photon():
    laser = model.Laser(id="LightSource:0", laser_medium="TiSapphire", pulse="ModeLocked",
                        type="SolidState")
    ome = one_channel_ome(instrument(lasers=[laser],
                                     detectors=[model.Detector(id="Detector:0", type="PMT")]),
                          light_source_settings={"id": "LightSource:0"},
                          detector_settings={"id": "Detector:0"})
    group = infer_ome(ome)
    assert group.microscope == "two-photon"
    assert "pulsed (ModeLocked) Ti:Sapphire laser" in group.evidence[0]
    assert "PMT" in group.evidence[0]


def test_continuous_ti_sapphire_is_not_two_photon():
    laser = model.Laser(id="LightSource:0", laser_medium="TiSapphire", pulse="CW")
    ome = one_channel_ome(instrument(lasers=[laser],
                                     detectors=[model.Detector(id="Detector:0", type="PMT")]),
                          light_source_settings={"id": "LightSource:0"},
                          detector_settings={"id": "Detector:0"})
    assert infer_ome(ome).microscope == "unknown"


def test_pinhole_is_confocal():
    group = infer_ome(one_channel_ome(pinhole_size=1.0))
    assert group.microscope == "confocal" and "PinholeSize=1" in group.evidence[0]


@pytest.mark.parametrize("source", [
    model.Arc(id="LightSource:0", type="HgXe"),
    model.LightEmittingDiode(id="LightSource:0"),
    model.Filament(id="LightSource:0", type="Halogen"),
])
def test_camera_with_lamp_is_widefield(source):
    kind = {"Arc": "arcs", "LightEmittingDiode": "light_emitting_diodes",
            "Filament": "filaments"}[type(source).__name__]
    scope = model.Instrument(id="Instrument:0", detectors=[model.Detector(id="Detector:0",
                                                                          type="CMOS")],
                             **{kind: [source]})
    group = infer_ome(one_channel_ome(scope, light_source_settings={"id": "LightSource:0"},
                                      detector_settings={"id": "Detector:0"}))
    assert group.microscope == "widefield"
    assert "camera detector Detector:0 (CMOS)" in group.evidence[0]


def test_camera_alone_says_nothing():
    """Spinning-disk confocals use cameras too: a camera without a lamp is no evidence."""
    scope = instrument(detectors=[model.Detector(id="Detector:0", type="EMCCD")])
    assert infer_ome(one_channel_ome(scope, detector_settings={"id": "Detector:0"})).microscope == "unknown"


def test_instrument_wide_hint_only_when_unambiguous():
    camera = model.Detector(id="Detector:0", type="CCD")
    arc = model.Arc(id="LightSource:0", type="Hg")
    laser = model.Laser(id="LightSource:1", laser_medium="Ar")
    only_lamps = infer_ome(one_channel_ome(instrument(arcs=[arc], detectors=[camera])))
    assert only_lamps.microscope == "widefield" and "instrument" in only_lamps.evidence[0]
    mixed = infer_ome(one_channel_ome(instrument(arcs=[arc], lasers=[laser], detectors=[camera])))
    assert mixed.microscope == "unknown"


def test_acquisition_mode_beats_instrument_hints():
    group = infer_ome(one_channel_ome(acquisition_mode="WideField", pinhole_size=1.0))
    assert group.microscope == "widefield"


@pytest.mark.parametrize("channel, label", [
    ({"contrast_method": "Brightfield"}, "brightfield"),
    ({"contrast_method": "Phase"}, "phase-contrast"),
    ({"contrast_method": "DIC"}, "dic"),
    ({"illumination_type": "Transmitted"}, "transmitted"),
    # a transmitted-light PMT channel of a confocal: still not fluorescence
    ({"acquisition_mode": "LaserScanningConfocalMicroscopy", "contrast_method": "Brightfield"},
     "brightfield"),
])
def test_non_fluorescence_channels_are_copied(channel, label):
    group = infer_ome(one_channel_ome(**channel))
    assert (group.microscope, group.policy) == (label, POLICY_COPY)
    assert any(line.startswith("policy=copy") for line in group.evidence)
    configured = infer_ome(one_channel_ome(**channel),
                           rules=InferenceRules(denoise_non_fluorescence=True))
    assert configured.policy == POLICY_DENOISE


def test_epifluorescence_is_not_transmitted():
    group = infer_ome(one_channel_ome(illumination_type="Epifluorescence",
                                      acquisition_mode="WideField"))
    assert (group.microscope, group.policy) == ("widefield", POLICY_DENOISE)


def test_modes_outside_the_calibration_fall_back():
    table = CalibrationTable.load()
    for mode in ("TIRF", "SPIM"):
        group = infer_ome(one_channel_ome(acquisition_mode=mode, fluor="Phalloidin-488"))
        assert group.policy == POLICY_DENOISE and group.specimen == "actin"
        transfer = table.lookup(group.microscope, group.specimen)
        assert (transfer.level, transfer.group) == ("specimen", "actin")
        unknown_specimen = infer_ome(one_channel_ome(acquisition_mode=mode))
        assert table.lookup(unknown_specimen.microscope, unknown_specimen.specimen).level == "all"


# --------------------------------------------------------------------------- specimen

@pytest.mark.parametrize("text, label", [
    ("DAPI", "nucleus"), ("Hoechst 33342", "nucleus"), ("DRAQ5", "nucleus"),
    ("H2B-GFP", "nucleus"), ("Alexa Fluor 488 Phalloidin", "actin"), ("LifeAct-RFP", "actin"),
    ("F-actin", "actin"), ("MitoTracker Red CMXRos", "mito"), ("TOM20", "mito"),
    ("mito-GFP", "mito"), ("Cy5", "unknown"), ("mitotic spindle", "unknown"),
    ("interacting proteins", "unknown"), ("alpha-actinin", "unknown"),
])
def test_default_specimen_rules(text, label):
    assert infer_ome(one_channel_ome(fluor=text)).specimen == label


def test_fluor_beats_channel_name_beats_image_text():
    ome = one_channel_ome(fluor="DAPI", name="mito channel")
    assert infer_ome(ome).specimen == "nucleus"
    ome = ome_model("YX", (8, 8), np.uint8, file_name="x", channels=[{"name": "LifeAct"}],
                    image_name="MitoTracker run")
    assert infer_ome(ome).specimen == "actin"


def test_ambiguous_description_is_ignored():
    ome = ome_model("CYX", (2, 8, 8), np.uint8, file_name="x",
                    description="fixed cells, DAPI and phalloidin")
    groups = [infer_channel(c) for c in channel_contexts(ome, 0, 2, 1, Path("/data/x.tif"))]
    assert [g.specimen for g in groups] == ["unknown", "unknown"]
    assert any("ambiguous" in line for line in groups[0].evidence)


# --------------------------------------------------------------------------- precedence

def test_precedence_override_metadata_folder_path(tmp_path):
    """explicit override > file metadata > folder default > path rules > unknown."""
    folder = tmp_path / "widefield_runs"
    folder.mkdir()
    path = folder / "actin_cells.ome.tif"
    rules = InferenceRules(folder_defaults=(FolderDefaults(folder, "confocal", "mito"),))

    def infer(ome, **overrides):
        return infer_channel(channel_contexts(ome, 0, 1, 1, path)[0], rules, **overrides)

    bare = one_channel_ome()
    described = one_channel_ome(acquisition_mode="MultiPhotonMicroscopy", fluor="DAPI")
    # metadata beats folder defaults
    assert (infer(described).microscope, infer(described).specimen) == ("two-photon", "nucleus")
    # folder defaults beat path rules ("widefield" folder name, "actin" file name)
    group = infer(bare)
    assert (group.microscope, group.specimen) == ("confocal", "mito")
    assert f"folder default for {folder}" in group.evidence[0]
    # overrides beat everything
    group = infer(described, microscope="widefield", specimen="actin")
    assert (group.microscope, group.specimen) == ("widefield", "actin")
    assert group.evidence[:2] == ("microscope=widefield: explicit override",
                                  "specimen=actin: explicit override")
    # without folder defaults, the path rules speak
    plain = infer_channel(channel_contexts(bare, 0, 1, 1, path)[0])
    assert (plain.microscope, plain.specimen) == ("widefield", "actin")
    assert "path" in plain.evidence[0]
    # with nothing at all: unknown, which transfers at the specimen / all level
    nothing = infer_channel(channel_contexts(bare, 0, 1, 1, tmp_path / "x.ome.tif")[0])
    assert (nothing.microscope, nothing.specimen) == ("unknown", "unknown")


def test_deepest_folder_default_wins(tmp_path):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    rules = InferenceRules(folder_defaults=(FolderDefaults(tmp_path, "confocal", "nucleus"),
                                            FolderDefaults(inner, "widefield", None)))
    group = infer_channels(1, path=inner / "x.tif", rules=rules)[0]
    assert (group.microscope, group.specimen) == ("widefield", "nucleus")


def test_folder_defaults_passed_per_file_rank_below_metadata():
    folder = FolderDefaults(None, "confocal", "nucleus")
    group = infer_ome(one_channel_ome(acquisition_mode="WideField"), folder=folder)
    assert (group.microscope, group.specimen) == ("widefield", "nucleus")
    assert "specimen=nucleus: folder default" in group.evidence[1]


def test_microscope_name_rules():
    for name, label in (("EPI_RFP", "widefield"), ("BF", "brightfield"), ("DIC", "dic"),
                        ("Trans", "transmitted"), ("confocal 488", "confocal"),
                        ("2p_positions", "unknown")):
        assert infer_ome(one_channel_ome(name=name)).microscope == label, name


# --------------------------------------------------------------------------- configuration

def test_configured_rules_come_first_and_are_validated(tmp_path):
    rules = InferenceSettings.parse({
        "specimen_rules": [{"pattern": "sir-?dna", "label": "nucleus", "fields": ["fluor"]},
                           {"pattern": "membrane|cellmask", "label": "membrane"}],
        "microscope_rules": [{"pattern": "^scope-7$", "label": "two-photon",
                              "fields": ["path"]}],
        "folders": [{"path": str(tmp_path), "microscope": "widefield"}],
        "denoise_non_fluorescence": True,
    }).rules
    assert infer_ome(one_channel_ome(fluor="SiR-DNA"), rules=rules).specimen == "nucleus"
    assert infer_ome(one_channel_ome(name="CellMask"), rules=rules).specimen == "membrane"
    assert infer_ome(one_channel_ome(fluor="DAPI"), rules=rules).specimen == "nucleus"  # defaults kept
    assert rules.defaults_for(tmp_path / "x.tif").microscope == "widefield"
    assert "configured rule" in infer_ome(one_channel_ome(fluor="SiR-DNA"),
                                          rules=rules).evidence[1]
    only = InferenceSettings.parse({"replace_default_rules": True}).rules
    assert only.specimen_rules == () and infer_ome(one_channel_ome(fluor="DAPI"),
                                                   rules=only).specimen == "unknown"
    for bad, message in (({"specimen_rules": [{"pattern": "(", "label": "nucleus"}]}, "regular"),
                         ({"specimen_rules": [{"label": "nucleus"}]}, "pattern"),
                         ({"microscope_rules": [{"pattern": "x", "label": "confocl"}]}, "confocl"),
                         ({"specimen_rules": [{"pattern": "x", "label": "Nucleus Stain"}]},
                          "invalid specimen"),
                         ({"specimen_rules": [{"pattern": "x", "label": "mito",
                                               "fields": ["filename"]}]}, "fields"),
                         ({"folders": [{"path": "/x", "microscope": "scope"}]}, "scope"),
                         ({"colour": True}, "colour")):
        with pytest.raises(ConfigError, match=message):
            InferenceSettings.parse(bad)


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="confocl"):
        infer_channels(1, microscope="confocl")
    assert infer_channels(1, microscope="Spinning disk")[0].microscope == "confocal"
    assert infer_channels(1, specimen="mitochondria")[0].specimen == "mito"


def test_label_rule_checks_fields():
    with pytest.raises(ValueError):
        LabelRule("x", "mito", ("nowhere",))
    assert LabelRule("dapi", "nucleus", "fluor").fields == ("fluor",)


# --------------------------------------------------------------------------- from files

def test_rgb_png_channels_each_get_a_group(tmp_path):
    from PIL import Image

    path = tmp_path / "WideField_BPAE_rgb.png"
    Image.fromarray(structured((16, 16, 3), np.uint8), mode="RGB").save(path)
    with ImageFile(path) as image:
        groups = infer_image(image, 0)
    assert [g.name for g in groups] == ["R", "G", "B"]
    assert all(g.microscope == "widefield" and "path" in g.evidence[0] for g in groups)


def test_multichannel_ome_tiff_per_channel(tmp_path):
    channels = [{"name": "DAPI", "acquisition_mode": "LaserScanningConfocalMicroscopy"},
                {"name": "Phalloidin", "acquisition_mode": "LaserScanningConfocalMicroscopy"},
                {"name": "BF", "contrast_method": "Brightfield"}]
    path = tmp_path / "cells.ome.tif"
    write_ome_tiff(path, structured((3, 8, 8), np.uint16), "CYX", channels=channels)
    with ImageFile(path) as image:
        groups = infer_image(image, 0)
    assert [(g.microscope, g.specimen, g.policy) for g in groups] == [
        ("confocal", "nucleus", "denoise"), ("confocal", "actin", "denoise"),
        ("brightfield", "unknown", "copy")]


def test_context_without_ome_uses_names_and_path():
    contexts = channel_contexts(None, None, 2, 1, Path("/x/y.tif"), ["DAPI", None])
    assert [c.name for c in contexts] == ["DAPI", None]
    assert infer_channel(contexts[0], DEFAULT_RULES).specimen == "nucleus"
    hint = ChannelContext(index=0, light_sources=(LightSourceHint("L", "laser", "TiSapphire",
                                                                  "ModeLocked"),),
                          detectors=(("D", "PMT"),))
    assert infer_channel(hint).microscope == "two-photon"
