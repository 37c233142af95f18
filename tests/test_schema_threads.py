"""OME schema validation from several threads at once, as the batching worker reads and
writes files side by side: every thread gets the answer one thread alone gets (lxml's
compiled schema and its error log are shared state; CI once quarantined four good files
with 'Internal error in XML Schema validation')."""

from __future__ import annotations

import threading

import numpy as np
import ome_types
import pytest
from lxml import etree

from autodip_watch.io import omexml
from autodip_watch.io.omexml import schema_error, schema_problem
from autodip_watch.io.writer import schema_valid


def document(channels: int, valid: bool) -> str:
    ome = ome_types.model.OME(images=[ome_types.model.Image(
        id="Image:0", pixels=ome_types.model.Pixels(
            id="Pixels:0", dimension_order="XYZCT", type="uint16", size_x=8, size_y=8,
            size_z=1, size_c=channels, size_t=1, metadata_only=True,
            channels=[ome_types.model.Channel(id=f"Channel:0:{c}") for c in range(channels)]))])
    text = ome_types.to_xml(ome)
    return text if valid else text.replace('SizeX="8"', 'SizeX="zero"')


# (channels, valid): documents of several sizes, valid and not
DOCUMENTS = [(1, True), (3, True), (2, False), (40, True), (5, False)]


def test_validation_from_many_threads_agrees_with_one_thread(monkeypatch):
    omexml._compiled_schema.cache_clear()  # threads race to compile it, too
    texts = [document(channels, valid) for channels, valid in DOCUMENTS]
    alone = [schema_problem(text) for text in texts]
    assert [problem is None for problem in alone] == [valid for _, valid in DOCUMENTS]
    omexml._compiled_schema.cache_clear()
    answers: list[list] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work(offset: int) -> None:
        try:
            start.wait()
            mine = []
            for round_ in range(30):
                index = (offset + round_) % len(texts)
                mine.append((index, schema_problem(texts[index])))
                if round_ % 5 == 0:
                    notes: list[str] = []
                    schema_valid(ome_types.from_xml(texts[0]), notes)
                    assert notes == []
            answers.append(mine)
        except BaseException as error:  # reported below with the thread's own error
            failures.append(error)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    assert len(answers) == 8
    for mine in answers:
        for index, problem in mine:
            assert problem == alone[index], (index, problem, alone[index])


@pytest.mark.parametrize("channels, valid", DOCUMENTS)
def test_schema_error_names_the_line(channels, valid):
    root = etree.fromstring(document(channels, valid).encode())
    error = schema_error(root)
    assert (error is None) == valid
    if not valid:
        line, message = error
        assert line >= 1 and "SizeX" in message
