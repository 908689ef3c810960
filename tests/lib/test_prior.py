"""The ordering prior (lib/prior.py): its three terms, its table's round trip, and the blend."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_assets.lib import prior

DAY = 1_768_000_000 - 1_768_000_000 % 86_400  # 00:00 UTC


def _impressions():
    """Category 0 clicked on mobile (1) in the morning band, category 1 never; item 2 the most clicked."""
    item = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    device = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 2])
    stamp = DAY + 8 * 3600 + np.arange(10)  # band 1 (06:00-12:00)
    click = np.array([1, 1, 0, 0, 0, 1, 1, 1, 0, 0])
    return item, device, stamp, click


CATEGORY = np.array([0, 1, 0, 1])  # item -> category


def test_build_counts_clicks_and_lifts_the_clicked_context():
    p = prior.build(*_impressions(), item_category=CATEGORY, n_categories=2)
    assert p.clicks.tolist() == [2, 0, 3, 0]
    assert p.lift.shape == (2, prior.N_DEVICES, 24 // prior.BAND_HOURS)
    # category 0 on mobile in band 1 clicked 5 of 7, above the overall 5/10; category 1 on desktop 0 of 2
    assert p.lift[0, 1, 1] > 1.0 > p.lift[1, 0, 1]
    assert p.lift[0, 2, 3] == pytest.approx(1.0)  # no impressions: shrunk all the way to 1


def test_interests_rank_their_categories_and_cold_users_are_flat():
    p = prior.build(*_impressions(), item_category=CATEGORY, n_categories=2)
    ids = np.array([0, 1])  # equal... except category: 0 has 2 clicks, 1 none
    rows = p.log_prior(ids, np.array([2, 2]), np.array([DAY, DAY]), np.array([[1, -1, -1], [-1, -1, -1]]))
    cold = rows[1]
    fan = rows[0]
    assert fan[1] - fan[0] > cold[1] - cold[0]  # interest in category 1 lifts item 1 against item 0
    flat = prior.interest_mix(np.array([[-1, -1, -1]]), 3)
    assert np.allclose(flat, prior.MIX_FLOOR)
    mix = prior.interest_mix(np.array([[2, 0, 1]]), 3)[0]
    assert mix[2] > mix[0] > mix[1] > prior.MIX_FLOOR


def test_unknown_items_and_devices_get_neutral_terms():
    p = prior.build(*_impressions(), item_category=CATEGORY, n_categories=2)
    rows = p.log_prior(np.array([99, -1]), np.array([-1]), np.array([DAY]), np.array([[0, 1, -1]]))
    assert np.isfinite(rows).all()
    assert rows[0, 0] == pytest.approx(np.log(prior.MIX_FLOOR) + np.log(np.log(2.0)))


def test_round_trip_and_malformed_bytes():
    p = prior.build(*_impressions(), item_category=CATEGORY, n_categories=2)
    back = prior.Prior.from_bytes(p.to_bytes())
    args = (np.array([0, 1, 2, 3]), np.array([1]), np.array([DAY + 7 * 3600]), np.array([[0, -1, -1]]))
    assert np.allclose(back.log_prior(*args), p.log_prior(*args), atol=1e-5)
    with pytest.raises(prior.PriorError):
        prior.Prior.from_bytes(b"not an npz")


def test_blend_is_the_logit_without_a_prior_and_moves_the_order_with_one():
    p = np.array([0.30, 0.25])
    assert np.allclose(prior.sigmoid(prior.blend(p, None, 1.0)), p)
    assert np.allclose(prior.blend(p, np.array([5.0, 0.0]), 0.0), prior.logit(p))
    blended = prior.blend(p, np.array([0.0, 1.0]), 1.0)
    assert blended[1] > blended[0]


def test_build_rejects_ids_outside_the_catalogue():
    item, device, stamp, click = _impressions()
    with pytest.raises(prior.PriorError, match="outside the catalogue"):
        prior.build(item + 10, device, stamp, click, CATEGORY, 2)


def _crossed():
    """The table of :func:`_impressions` with item genders (F, M, unisex, F), prices and users' ages 20..60."""
    return prior.build(*_impressions(), item_category=CATEGORY, n_categories=2, item_gender=[0, 1, -1, 0],
                       price=[10.0, 100.0, 50.0, 1000.0], user_age=np.array([20.0, 40.0, 60.0, np.nan]))


def test_the_default_coefficients_are_the_first_three_terms_and_the_crosses_need_the_user():
    p = _crossed()
    ids, device, stamp, interests = np.arange(4), np.array([1, 1]), np.array([DAY, DAY]), np.array(
        [[0, -1, -1], [1, 0, -1]])
    terms = p.terms(ids, device, stamp, interests, gender=np.array([0, -1]), age=np.array([60.0, 40.0]))
    assert terms.shape == (2, 4, len(prior.TERMS))
    assert np.allclose(p.log_prior(ids, device, stamp, interests), terms[..., :3].sum(axis=2))
    match, mismatch, price_age = (terms[..., prior.TERMS.index(t)] for t in ("gender_match", "gender_mismatch",
                                                                            "price_age"))
    assert match[0].tolist() == [1, 0, 0, 1] and mismatch[0].tolist() == [0, 1, 0, 0]  # a woman; item 2 unisex
    assert not match[1].any() and not mismatch[1].any()                                  # unknown gender: 0
    assert p.age_mean == pytest.approx(40.0) and price_age[1].tolist() == [0, 0, 0, 0]   # the mean age: 0
    assert price_age[0, 3] > 0 > price_age[0, 0]   # an older user: expensive up, cheap down
    # without the user's gender and age (an older release's inputs) the crosses are 0
    assert not p.terms(ids, device, stamp, interests)[..., 3:].any()
    with pytest.raises(prior.PriorError, match="6 finite numbers"):
        p.log_prior(ids, device, stamp, interests, coefficients=(1, 1, 1))


def test_the_crossed_table_round_trips_and_an_older_table_reads_without_the_crosses():
    import io

    p = _crossed()
    back = prior.Prior.from_bytes(p.to_bytes())
    args = (np.arange(4), np.array([1]), np.array([DAY]), np.array([[0, -1, -1]]))
    kwargs = {"coefficients": (1, 2, 3, 0.5, -1, 0.25), "gender": np.array([1]), "age": np.array([25.0])}
    assert np.allclose(back.log_prior(*args, **kwargs), p.log_prior(*args, **kwargs), atol=1e-5)
    old = io.BytesIO()  # what a release before the crosses published
    np.savez(old, clicks=p.clicks.astype(np.float32), item_category=p.item_category.astype(np.int32),
             lift=p.lift.astype(np.float32), band_hours=np.array(p.band_hours))
    older = prior.Prior.from_bytes(old.getvalue())
    assert older.item_gender is None and older.age_std == 0.0
    assert not older.terms(*args, gender=np.array([1]), age=np.array([25.0]))[..., 3:].any()


def test_coefficients_parse_and_the_search_climbs_to_the_best():
    assert prior.parse_coefficients("") == prior.DEFAULT_COEFFICIENTS
    assert prior.parse_coefficients("2,1,0.5,0,-1,0.25") == (2.0, 1.0, 0.5, 0.0, -1.0, 0.25)
    assert prior.format_coefficients((2.0, 1.0, 0.5, 0.0, -1.0, 0.25)) == "2,1,0.5,0,-1,0.25"
    for bad in ("1,2,x,0,0,0", "1,1,1", "1,1,1,0,0,nan"):
        with pytest.raises(prior.PriorError):
            prior.parse_coefficients(bad)
    target = np.array([2.0, 0.5, 1.5, 1.0, -2.0, 0.25])
    best, path = prior.search_coefficients(lambda c: -float(np.sum((np.asarray(c) - target) ** 2)), rounds=20)
    assert np.allclose(best, target)
    values = [step["value"] for step in path]
    assert values == sorted(values) and path[0]["term"] == "start"


def test_the_interest_term_is_the_log_of_the_interest_mix_of_each_candidates_category():
    rng = np.random.default_rng(3)
    n_items, n_cat = 50, 6
    category = rng.integers(0, n_cat, n_items)
    p = prior.build(rng.integers(0, n_items, 500), rng.integers(0, 3, 500), DAY + rng.integers(0, 86_400, 500),
                    rng.integers(0, 2, 500), category, n_cat)
    interests = np.array([[2, 0, 5], [1, -1, -1], [-1, -1, -1], [3, 3, 9]])  # 9: outside the catalogue's codes
    ids = np.append(rng.integers(0, n_items, 30), [-1, 99])                  # unknown ids: no category
    got = p.terms(ids, np.array([0, 1, 2, 1]), np.full(4, DAY), interests)[..., 0]
    mix = np.log(prior.interest_mix(interests, n_cat))
    known = np.append(category[ids[:30]], [-1, -1])
    want = np.where(known >= 0, mix[:, np.maximum(known, 0)], np.log(prior.MIX_FLOOR))
    np.testing.assert_allclose(got, want)
