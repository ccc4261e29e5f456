"""The pipeline's steps, one module per notebook: only each step's entry code (``run(cfg, paths, ...)`` under
:func:`opgrpo_lib.lifecycle.step_run`). The registry (``opgrpo_lib.registry``) names them; the machinery they share
lives in the package below (reward, coverage, text, lm, models, training, figures...). Imports nothing, so a step's
key covers only the modules it uses."""
