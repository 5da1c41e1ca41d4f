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


# --------------------------------------------- when the estimate cannot be trusted


def test_small_requests_behind_a_bulk_flow_do_not_make_an_estimate():
    """The user's case: 272-byte requests on a 2 Mbit/s link wait 25-110 ms in a bulk
    flow's queue and "measure" 0.02-0.09 Mbit/s. They are too small to measure a rate:
    no estimate, said so, and the prior serves."""
    link = LinkEstimate()
    link.observe_rtt(40.0)
    for queue_ms in (25.0, 60.0, 110.0, 40.0):
        link.observe_upload(272, upload_ms(272, 2.0, 20.0) + queue_ms)
    assert link.measured_mbps == pytest.approx(272 * 8 * 4 / (235 + 4 * 1.088) / 1000)
    assert link.measured_mbps < 0.1  # what was recorded before, silently
    assert link.uplink_mbps is None and not link.trusted
    assert link.reason.startswith("small")
    assert link.transfer_ms(10_000, prior_mbps=2.0) == pytest.approx(40 + 20)
    assert link.record() == {"est_mbps": None, "est_untrusted": link.reason}


def test_small_requests_keep_the_last_trusted_estimate():
    link = LinkEstimate()
    link.observe_rtt(40.0)
    link.observe_upload(150_000, upload_ms(150_000, 2.0, 20.0))
    assert link.trusted and link.uplink_mbps == pytest.approx(2.0)
    assert link.record() == {"est_mbps": 2.0}
    link.observe_upload(272, upload_ms(272, 2.0, 20.0) + 80.0)  # behind a queue
    assert not link.trusted and link.uplink_mbps == pytest.approx(2.0)
    # a quarter of the bandwidth-delay product (2 Mbit/s x 40 ms = 10 KB) is needed
    assert link.needed_bytes() == pytest.approx(2500)
    link.observe_upload(2_400, upload_ms(2_400, 2.0, 20.0))
    assert not link.trusted and link.reason.startswith("small")
    link.observe_upload(60_000, upload_ms(60_000, 2.0, 20.0))
    assert link.trusted and link.uplink_mbps == pytest.approx(2.0)


def test_the_bandwidth_delay_product_scales_what_is_small():
    link = LinkEstimate()
    link.observe_rtt(40.0)
    link.observe_upload(500_000, upload_ms(500_000, 50.0, 20.0))
    assert link.needed_bytes() == pytest.approx(0.25 * 50e6 / 8 * 0.040)  # 62.5 KB
    link.observe_upload(40_000, upload_ms(40_000, 5.0, 20.0))  # 64 ms: not a 5 Mbit/s link
    assert not link.trusted and link.uplink_mbps == pytest.approx(50.0)


def test_uploads_of_several_sizes_behind_a_standing_queue_are_untrusted():
    """Behind a bulk flow with a 300 ms standing queue, sharing 1 of 2 Mbit/s: the times
    of 20-150 KB uploads fit 300 ms + bytes/rate, so most of what they took was waiting."""
    link = LinkEstimate()
    link.observe_rtt(40.0)
    link.observe_upload(150_000, upload_ms(150_000, 2.0, 20.0))  # before the bulk flow
    assert link.trusted
    for nbytes in (20_000, 30_000, 20_000, 40_000):
        link.observe_upload(nbytes, upload_ms(nbytes, 1.0, 20.0) + 300.0)
    assert link.queueing_ms() > 300  # (pooled with the clean upload, the fit overshoots)
    assert not link.trusted and link.reason.startswith("queueing")
    assert link.uplink_mbps == pytest.approx(2.0)  # the last trusted estimate
    assert link.measured_mbps < 0.8  # the queue counted as serialization


def test_uploads_of_several_sizes_on_a_clean_link_are_trusted():
    link = LinkEstimate()
    link.observe_rtt(40.0)
    for nbytes in (150_000, 3_000, 8_000, 33_000, 150_000, 5_000):
        link.observe_upload(nbytes, upload_ms(nbytes, 1.0, 20.0) + 2.0)  # 2 ms of jitter
        assert link.trusted, link.reason
    assert link.queueing_ms() == pytest.approx(2.0, abs=0.5)
    assert link.uplink_mbps == pytest.approx(1.0, rel=0.02)


def test_time_that_does_not_grow_with_size_is_queueing():
    link = LinkEstimate()
    link.observe_rtt(40.0)
    link.observe_upload(10_000, 520.0)
    link.observe_upload(40_000, 500.0)
    assert link.queueing_ms() == float("inf") and not link.trusted
    assert link.uplink_mbps == pytest.approx(10_000 * 8 / 500 / 1000)  # the first, trusted


def test_adaptive_choices_record_an_untrusted_estimate(fashion):
    from testbed import offloaders

    plugin, model, _ = fashion
    neuro = offloaders.get("neurosurgeon")(plugin, model, prior_mbps=0.5)
    neuro.device_ms = [1.0] * len(plugin.split_points)  # (no profiling needed)
    neuro.device_ms = [1.0] * (len(plugin.build_stages()))
    link = LinkEstimate()
    link.observe_rtt(40.0)
    for _ in range(3):
        link.observe_upload(272, upload_ms(272, 2.0, 20.0) + 60.0)
    neuro.link = link
    choice = neuro.choose()[1]
    assert choice["est_mbps"] is None and choice["est_untrusted"].startswith("small")
    # predicted at the prior (0.5 Mbit/s), not at the 0.03 Mbit/s the uploads suggest
    assert neuro.link.transfer_ms(1000, neuro.config["prior_mbps"]) == pytest.approx(16 + 20)
