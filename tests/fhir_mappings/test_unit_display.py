"""Units as people write them: every unit a catalogue names has a display form, and it is what people expect."""

import pytest

from fhir_mappings.terminology import catalogue_names, load_catalogue


@pytest.mark.parametrize("name", catalogue_names())
def test_every_unit_of_every_catalogue_has_a_display(name):
    catalogue = load_catalogue(name)
    named = {m.unit for m in catalogue.measures} | {u for m in catalogue.measures for u in m.units}
    assert named <= set(catalogue.unit_displays), sorted(named - set(catalogue.unit_displays))
    for measure in catalogue.measures:
        assert measure.unit_display == catalogue.unit_displays[measure.unit]
        assert "*" not in measure.unit_display and "[" not in measure.unit_display  # no UCUM syntax left


@pytest.mark.parametrize(("ucum", "display"), [
    ("[IU]/mL", "IU/mL"), ("10*3/uL", "×10³/µL"), ("{cells}/uL", "cells/µL"), ("/uL", "cells/µL"),
    ("10*9/L", "×10⁹/L"), ("{score}", "score"), ("%", "%"),
])
def test_the_default_catalogue_writes_units_as_people_do(ucum, display):
    assert load_catalogue().unit_display(ucum) == display


def test_a_unit_the_catalogue_does_not_name_is_shown_as_it_is():
    assert load_catalogue().unit_display("mg/dL") == "mg/dL"
    assert load_catalogue().unit_display(None) == ""
