def test_cpu_auto_tile_covers_the_image_with_the_fewest_computed_pixels():
    from napari_msunet.inference.tiling import balanced_tile

    # 3584 = 3.5 tiles of 1024: 896 covers it in 4 without a half-empty last row
    assert balanced_tile((3584, 3584), 64, 128) == 896
    # large slides and images up to one tile keep the largest tile
    assert balanced_tile((100_000, 100_000), 64, 128) == 1024
    assert balanced_tile((1000, 700), 64, 128) == 1024
    for shape in [(3584, 3584), (5000, 1100), (25_000, 17_000)]:
        t = balanced_tile(shape, 64, 128)
        assert t % 64 == 0
        assert 512 <= t <= 1024
