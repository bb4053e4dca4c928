import os

if os.environ.get("RANK") == os.environ.get("GENSCALE_TEST_FAIL_RANK"):
    import genscale.train.loop as loop
    from genscale.errors import GenscaleError
    original = loop.fit
    def fit(cfg, run_dir, recipe, *a, **k):
        step, at = recipe.step, int(os.environ["GENSCALE_TEST_FAIL_STEP"])
        def failing(i, *sa, **sk):
            if i == at:
                raise GenscaleError(f"injected failure at step {i}")
            return step(i, *sa, **sk)
        recipe.step = failing
        return original(cfg, run_dir, recipe, *a, **k)
    loop.fit = fit
    import genscale.pipeline as p
    p.fit = fit
