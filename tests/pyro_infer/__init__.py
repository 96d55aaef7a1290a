"""Pyro's own ELBO tests (tests/infer/test_gradient.py, test_valid_models.py of pyro-ppl 1.9.x)
run with ``pyro_vae.objectives.ELBO`` in place of ``pyro.infer.Trace_ELBO`` (issue #11).

See ``docs/pyro_suite.md`` for what runs, what passes and what is refused on purpose.
"""
