"""DVH metric names: the one parser (D95%, D0.03cc, V20Gy, Dmean …), its labels and its values."""

import numpy as np
import pytest

from dosediffusion.errors import InputError
from dosediffusion.metrics.dvh import DVH
from dosediffusion.metrics.dvh_metric import DvhMetric, parse_dvh_metric


@pytest.fixture(scope="module")
def dvh():
    """1000 samples of 0.01 cc (10 cc) at 0.1 … 100 Gy, hottest first."""
    return DVH(np.linspace(100.0, 0.1, 1000), np.full(1000, 0.01))


@pytest.mark.parametrize(("text", "metric", "label"), [
    ("D95%", DvhMetric("D", 95.0, "%"), "D95%"),
    ("D95", DvhMetric("D", 95.0, "%"), "D95%"),
    ("d 95 %", DvhMetric("D", 95.0, "%"), "D95%"),
    ("D0.03cc", DvhMetric("D", 0.03, "cc"), "D0.03cc"),
    ("D0,03 CC", DvhMetric("D", 0.03, "cc"), "D0.03cc"),
    ("D2cc", DvhMetric("D", 2.0, "cc"), "D2cc"),
    ("V20Gy", DvhMetric("V", 20.0, "Gy"), "V20Gy"),
    ("v20 gy", DvhMetric("V", 20.0, "Gy"), "V20Gy"),
    ("V2000cGy", DvhMetric("V", 20.0, "Gy"), "V20Gy"),
    ("V20Gy[cc]", DvhMetric("V", 20.0, "Gy", "cc"), "V20Gy[cc]"),
    ("V95%", DvhMetric("V", 95.0, "%Rx"), "V95%Rx"),
    ("V95%Rx", DvhMetric("V", 95.0, "%Rx"), "V95%Rx"),
    ("Dmean", DvhMetric("mean"), "Dmean"),
    ("DMEAN", DvhMetric("mean"), "Dmean"),
    ("Dmax", DvhMetric("max"), "Dmax"),
    ("Dmin", DvhMetric("min"), "Dmin"),
])
def test_each_accepted_form_parses_to_its_metric_and_its_label_parses_back(text, metric, label):
    parsed = parse_dvh_metric(text)
    assert parsed == metric and parsed.label == label
    assert parse_dvh_metric(parsed.label) == parsed


@pytest.mark.parametrize("text", ["", "D", "Dfoo", "X95%", "D95Gy", "V20", "V20cc", "D-5%", "D120%", "mean", "D95%%"])
def test_nonsense_is_refused_naming_the_metric_and_the_accepted_forms(text):
    with pytest.raises(InputError) as caught:
        parse_dvh_metric(text)
    message = str(caught.value)
    assert repr(text) in message and "D<x>%" in message and "V<x>Gy" in message and "Dmean" in message


def test_values_are_the_dvh_s_own(dvh):
    assert parse_dvh_metric("D95%").value(dvh) == dvh.dose_at_volume_percent(95)
    assert parse_dvh_metric("D0.03cc").value(dvh) == dvh.dose_at_volume_cc(0.03)
    assert parse_dvh_metric("Dmean").value(dvh) == pytest.approx(50.05)  # the mean of 0.1 … 100 Gy
    assert parse_dvh_metric("Dmax").value(dvh) == 100.0 and parse_dvh_metric("Dmin").value(dvh) == pytest.approx(0.1)
    # 800 of the 1000 samples are at 20.08 Gy or more: 80 % of the volume, 8 cc
    assert parse_dvh_metric("V20Gy").value(dvh) == pytest.approx(80.0, abs=0.1)
    assert parse_dvh_metric("V20Gy[cc]").value(dvh) == pytest.approx(8.0, abs=0.01)


def test_prescription_relative_forms_need_the_prescription(dvh):
    assert parse_dvh_metric("V40%").value(dvh, prescription_gy=50.0) == parse_dvh_metric("V20Gy").value(dvh)
    assert parse_dvh_metric("Dmax").value(dvh, prescription_gy=50.0, dose_unit="%Rx") == pytest.approx(200.0)
    with pytest.raises(InputError, match="V40%Rx in %Rx needs a prescription"):
        parse_dvh_metric("V40%").value(dvh)
    with pytest.raises(InputError, match="needs a prescription"):
        parse_dvh_metric("D95%").value(dvh, dose_unit="%Rx")


def test_only_volumes_are_not_doses():
    assert [parse_dvh_metric(t).is_dose for t in ("D95%", "D2cc", "Dmean", "V20Gy")] == [True, True, True, False]
