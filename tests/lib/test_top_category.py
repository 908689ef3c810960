import numpy as np
import pytest

from recsys_assets.lib.top_category import (
    CATEGORIES,
    NONE,
    CLICK_WEIGHT,
    HALF_LIFE_DAYS,
    IMPRESSION_WEIGHT,
    category_codes,
    interests_after_clicks,
    point_in_time_interest_weights,
    point_in_time_interests,
    rank_interests,
    point_in_time_top_category,
    top_category_of_window,
)

H = 3600


@pytest.mark.parametrize(
    "history, now, expected",
    [
        ([], 100 * H, NONE),                                        # no clicks at all
        ([(10 * H, 3)], 10 * H, NONE),                              # a click at the same instant is not "before"
        ([(10 * H, 3)], 11 * H, 3),
        ([(1 * H, 3), (2 * H, 3), (30 * H, 5)], 40 * H, 5),         # the 24 h window wins over older history
        ([(1 * H, 3), (2 * H, 3), (3 * H, 5)], 60 * H, 3),          # window empty -> dominant of all clicks
        ([(50 * H, 3), (51 * H, 5)], 52 * H, 5),                    # tie -> most recent
        ([(51 * H, 5), (52 * H, 3)], 53 * H, 3),
        ([(50 * H, 3), (50 * H + 1, 5), (50 * H + 2, 3)], 60 * H, 3),
        ([(36 * H, 7)], 60 * H, 7),                                 # exactly 24 h before is inside the window
    ],
)
def test_serving_definition(history, now, expected):
    assert top_category_of_window(history, now) == expected


def test_vectorised_matches_the_definition_on_random_histories():
    rng = np.random.default_rng(4)
    n_users, n_clicks, n_queries = 30, 600, 2000
    cu = rng.integers(0, n_users, n_clicks)
    ct = rng.integers(0, 6 * 24 * H, n_clicks)
    cc = rng.integers(0, 4, n_clicks)  # few categories -> many ties
    ct[:50] = ct[50:100]  # equal timestamps across clicks
    qu = rng.integers(0, n_users + 3, n_queries)  # includes users without clicks
    qt = rng.integers(0, 7 * 24 * H, n_queries)
    qt[:100] = ct[:100]  # queries at the instant of a click
    got = point_in_time_top_category(cu, ct, cc, qu, qt)
    for k in range(n_queries):
        hist = [(int(t), int(c)) for u, t, c in zip(cu, ct, cc) if u == qu[k]]
        want = top_category_of_window(hist, int(qt[k]))
        if want != got[k]:
            # ties at identical timestamps may legitimately resolve to either category
            tied_recent = {c for t, c in hist if t == max(t2 for t2, c2 in hist if c2 in (want, got[k]) and t2 < qt[k])}
            assert {want, int(got[k])} <= tied_recent, (k, hist, qt[k], want, got[k])


def test_codes_reject_unknown_categories():
    assert category_codes(["accessories", "tools"]).tolist() == [0, len(CATEGORIES) - 1]
    with pytest.raises(ValueError, match="unknown category_l1"):
        category_codes(["accessories", "spaceships"])


def test_catalogue_categories_are_the_fixed_codes():
    from recsys_assets.lib.catalogue import load_catalogue

    assert tuple(sorted(load_catalogue()["category_l1"].unique())) == CATEGORIES


def test_a_shops_catalogue_has_its_own_vocabulary():
    """Own data (lib.sources): codes are positions in the catalogue's sorted categories, not the generator's 20."""
    from recsys_assets.lib.catalogue import load_catalogue
    from recsys_assets.lib.top_category import category_vocabulary

    shop = ["home", "apparel", "home", "outdoors"]
    vocabulary = category_vocabulary(shop)
    assert vocabulary == ("apparel", "home", "outdoors")
    codes = category_codes(shop, vocabulary)
    assert codes.tolist() == [1, 0, 1, 2]
    with pytest.raises(ValueError, match="3 categories"):
        category_codes(["garden"], vocabulary)
    # Two clicks on "outdoors" (code 2, beyond a one-category table) then one on "apparel": outdoors dominates.
    top = point_in_time_top_category([5, 5, 5], [100, 200, 300], [2, 2, 0], [5], [400])
    assert top.tolist() == [2]
    assert category_vocabulary(load_catalogue()["category_l1"]) == CATEGORIES  # the generator: unchanged


def _interests_by_definition(events, user, now, n=3):
    """One query, straight from the definition: decayed weights of the user's events strictly before ``now``."""
    weights: dict[int, float] = {}
    for u, t, c, k in events if user >= 0 else []:
        if u == user and t < now:
            w = (IMPRESSION_WEIGHT + CLICK_WEIGHT * k) * 2.0 ** ((t - now) / (HALF_LIFE_DAYS * 86_400))
            weights[c] = weights.get(c, 0.0) + w
    ranked = sorted(weights, key=lambda c: (-weights[c], c))[:n]
    return ranked + [NONE] * (n - len(ranked))


def test_interests_match_the_definition_on_random_histories():
    rng = np.random.default_rng(7)
    n = 600
    events = list(zip(rng.integers(-1, 12, n).tolist(), rng.integers(0, 30 * 86_400, n).tolist(),
                      rng.integers(0, 6, n).tolist(), (rng.random(n) < 0.2).astype(int).tolist()))
    eu, et, ec, ek = map(np.array, zip(*events))
    qu = rng.integers(-1, 14, 300)   # anonymous and never-seen users too
    qt = rng.integers(0, 32 * 86_400, 300)
    qu[:20], qt[:20] = eu[:20], et[:20]  # queries at an event's own time: that event is not "before"
    got = point_in_time_interests(eu, et, ec, ek, qu, qt)
    want = np.array([_interests_by_definition(events, int(u), int(t)) for u, t in zip(qu, qt)])
    np.testing.assert_array_equal(got, want)


def test_interests_rank_clicks_and_recent_activity_first():
    day = 86_400
    # user 0: category 2 shown 4 times, category 5 shown once and clicked (weighs 5), category 1 long ago
    events = [(0, 1 * day, 2, 0)] * 4 + [(0, 1 * day, 5, 1), (0, 0, 1, 0), (1, 1 * day, 3, 0)]
    eu, et, ec, ek = map(np.array, zip(*events))
    got = point_in_time_interests(eu, et, ec, ek, [0, 0, 1, 2], [2 * day, 1 * day, 2 * day, 2 * day])
    assert got.tolist() == [[5, 2, 1], [1, NONE, NONE], [3, NONE, NONE], [NONE, NONE, NONE]]
    # a catalogue with fewer categories than interests
    assert point_in_time_interests([0], [0], [0], [0], [0], [1]).tolist() == [[0, NONE, NONE]]
    # recency: 10 impressions of category 4 three half-lives ago weigh less than 2 of category 6 now
    old = [(0, 0, 4, 0)] * 10 + [(0, int(3 * HALF_LIFE_DAYS * day), 6, 0)] * 2
    eu, et, ec, ek = map(np.array, zip(*old))
    assert point_in_time_interests(eu, et, ec, ek, [0], [int(3 * HALF_LIFE_DAYS * day) + 1])[0, :2].tolist() == [6, 4]


def test_clicks_added_to_the_end_of_day_weights_give_the_batch_interests_of_history_plus_clicks():
    """The click path's update (stored end-of-day weights + the clicks since, as clicked impressions) equals the
    batch definition over the whole history with those clicks appended: the online/offline parity of interests."""
    rng = np.random.default_rng(11)
    day = 86_400
    for case in range(40):
        n = int(rng.integers(0, 80))
        eu = rng.integers(0, 3, n)
        et = rng.integers(0, 10 * day, n)
        ec = rng.integers(0, 8, n)
        ek = (rng.random(n) < 0.2).astype(int)
        snapshot_at = 10 * day
        weights = point_in_time_interest_weights(eu, et, ec, ek, [0], [snapshot_at], n_categories=8)[0]
        clicks = [(int(t), int(c)) for t, c in zip(rng.integers(snapshot_at - day, snapshot_at + day, 5),
                                                   rng.integers(0, 10, 5))]  # categories past the stored ones too
        now = max(t for t, _ in clicks) + 1
        after = [(t, c) for t, c in clicks if t >= snapshot_at]  # the ones before are in the snapshot already
        all_u = np.r_[eu, np.zeros(len(after), int)]
        all_t = np.r_[et, [t for t, _ in after]].astype(np.int64)
        all_c = np.r_[ec, [c for _, c in after]].astype(np.int64)
        all_k = np.r_[ek, np.ones(len(after), int)]
        want = point_in_time_interests(all_u, all_t, all_c, all_k, [0], [now])[0]
        got_weights, got = interests_after_clicks(weights, snapshot_at, clicks, now)
        assert got.tolist() == want.tolist(), case
        batch = point_in_time_interest_weights(all_u, all_t, all_c, all_k, [0], [now], n_categories=10)[0]
        np.testing.assert_allclose(got_weights, batch[:len(got_weights)], rtol=1e-9, atol=1e-12)
    # no stored weights (a user registered since the snapshot): every click of the window counts
    _, codes = interests_after_clicks(None, None, [(5, 2), (6, 2), (7, 4)], 8)
    assert codes.tolist() == [2, 4, NONE]
    assert interests_after_clicks([], None, [], 8)[1].tolist() == [NONE, NONE, NONE]


def test_rank_interests_breaks_ties_to_the_lower_code_and_pads_small_catalogues():
    assert rank_interests(np.array([0.0, 2.0, 2.0, 1.0])).tolist() == [[1, 2, 3]]
    assert rank_interests(np.array([[0.5, 0.0]])).tolist() == [[0, NONE, NONE]]


def _random_days(rng, days: int, users: int, per_day: int, n_items: int = 60):
    import pandas as pd

    frames = []
    for d in range(days):
        frames.append(pd.DataFrame({
            "user_id": rng.integers(-1, users, per_day),          # -1: anonymous rows
            "timestamp": d * 86_400 + np.sort(rng.integers(0, 86_400, per_day)),
            "item_id": rng.integers(0, n_items, per_day),
            "click": (rng.random(per_day) < 0.2).astype(np.int64)}))
    return frames


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_day_from_the_state_two_days_back_equals_the_day_from_the_whole_history(seed):
    """What the daily asset does (the state at the start of day d-1, the raw events of days d-1 and d) gives the
    codes of the whole history exactly and its weights to float rounding, for every row and every user at the end
    of the day; the state rolled forward day by day equals the state of the whole history."""
    import pandas as pd

    from recsys_assets.lib.top_category import HistoryState, history_codes

    rng = np.random.default_rng(seed)
    category = rng.integers(0, 7, 60)  # 7 categories over 60 items
    frames = _random_days(rng, 6, users=40, per_day=400)
    states = {}
    for d in range(6):
        end = (d + 1) * 86_400
        whole = pd.concat(frames[: d + 1], ignore_index=True)
        state = states.get(d - 2)
        recent = pd.concat(frames[max(d - 1, 0): d + 1], ignore_index=True) if state else whole
        states[d] = HistoryState.of(recent, category, end, state)
        full = HistoryState.of(whole, category, end)
        np.testing.assert_array_equal(states[d].user, full.user)
        np.testing.assert_array_equal(states[d].clicks, full.clicks)
        np.testing.assert_array_equal(states[d].last_click, full.last_click)
        np.testing.assert_allclose(states[d].weights, full.weights, rtol=1e-9, atol=1e-12)
        for users, times in ((frames[d]["user_id"], frames[d]["timestamp"]), (full.user, np.full(len(full.user), end))):
            want = history_codes(whole, category, users, times, with_weights=True)
            got = history_codes(recent, category, users, times, with_weights=True, state=state)
            for name in want:
                if name == "interest_weights":
                    np.testing.assert_allclose(np.stack(got[name]), np.stack(want[name]), rtol=1e-6, atol=1e-9)
                else:
                    np.testing.assert_array_equal(got[name], want[name], err_msg=f"day {d} {name}")


def test_a_state_round_trips_and_refuses_a_window_it_cannot_count():
    from recsys_assets.lib.top_category import HistoryState, history_codes

    rng = np.random.default_rng(3)
    category = rng.integers(0, 5, 60)
    frames = _random_days(rng, 2, users=10, per_day=100)
    state = HistoryState.of(frames[0], category, 86_400, vocabulary=("a", "b", "c", "d", "e"))
    again = HistoryState.from_bytes(state.to_bytes())
    for field in ("user", "clicks", "last_click", "weights"):
        np.testing.assert_array_equal(getattr(again, field), getattr(state, field))
    assert again.at == state.at == 86_400 and again.vocabulary == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="window starts before"):   # a row at 12:00 of day 1 looks back to day 0
        history_codes(frames[1], category, [1], [86_400 + 12 * 3600], state=state)
