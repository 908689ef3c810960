import numpy as np

from recsys_assets.lib.catalogue import dominant_colour, load_catalogue, render_item_image


def test_catalogue_has_all_products_in_file_order():
    df = load_catalogue()
    assert len(df) == 2465
    assert df["item_id"].tolist() == list(range(2465))
    assert df["category_l1"].nunique() == 20
    assert df.groupby(["category_l1", "category_l2"]).ngroups == 85
    assert set(df["item_gender"]) == {"M", "F", "U"}
    assert df["item_uuid"].is_unique


def test_colour_words():
    assert dominant_colour("Mauve Leather Daypack, soft black straps") == "mauve"
    assert dominant_colour("A plain bag") == ""


def test_images_carry_category_style_and_colour():
    a = np.asarray(render_item_image("accessories", "backpack", "red"), dtype=float)
    same = np.asarray(render_item_image("accessories", "backpack", "red"), dtype=float)
    other_colour = np.asarray(render_item_image("accessories", "backpack", "blue"), dtype=float)
    other_cat = np.asarray(render_item_image("furniture", "sofa", "red"), dtype=float)
    assert a.shape == (160, 160, 3)
    assert np.array_equal(a, same)
    assert np.abs(a - other_colour).mean() > 5
    assert np.abs(a - other_cat).mean() > 5
