"""The uplink estimate from requests' own transfers (testbed/offloaders/link_estimate.py)."""

import pytest

from testbed.offloaders.link_estimate import LinkEstimate


def upload_ms(nbytes, mbps, one_way_ms):
    return nbytes * 8 / (mbps * 1000) + one_way_ms


def test_no_estimate_before_an_informative_transfer():
    link = LinkEstimate()
    link.observe_rtt(40.0)
    assert link.uplink_mbps is None
    link.observe_upload(60, upload_ms(60, 1.0, 20.0))  # 0.5 ms on the wire: uninformative
    assert link.uplink_mbps is None
    assert link.transfer_ms(125_000, prior_mbps=2.0) == pytest.approx(500 + 20)


@pytest.mark.parametrize("mbps", [0.5, 1.0, 10.0, 50.0])
def test_recovers_the_rate_after_subtracting_the_one_way_delay(mbps):
    link = LinkEstimate()
    link.observe_rtt(40.0)
    for nbytes in (150_000, 40_000, 150_000):
        link.observe_upload(nbytes, upload_ms(nbytes, mbps, 20.0))
    assert link.uplink_mbps == pytest.approx(mbps, rel=1e-9)
    assert link.transfer_ms(10_000, prior_mbps=99) == pytest.approx(upload_ms(10_000, mbps, 20))


def test_smallest_rtt_is_kept():
    link = LinkEstimate()
    for rtt in (50.0, 41.0, 45.0, -1.0):
        link.observe_rtt(rtt)
    assert link.rtt_ms == 41.0 and link.one_way_ms == 20.5


def test_window_follows_a_rate_change_and_weights_large_transfers():
    link = LinkEstimate(window=4)
    link.observe_rtt(20.0)
    for _ in range(10):
        link.observe_upload(100_000, upload_ms(100_000, 10.0, 10.0))
    for _ in range(4):  # the bandwidth halves: four requests later, only the new rate
        link.observe_upload(100_000, upload_ms(100_000, 5.0, 10.0))
    assert link.uplink_mbps == pytest.approx(5.0)
    # a noisy small transfer barely moves a pool of large ones
    link.observe_upload(2_000, upload_ms(2_000, 5.0, 10.0) + 5.0)
    assert link.uplink_mbps == pytest.approx(5.0, rel=0.05)


def test_a_delay_without_rtt_counts_entirely_as_serialization():
    link = LinkEstimate()
    link.observe_upload(125_000, 1000.0)
    assert link.uplink_mbps == pytest.approx(1.0)
