"""Step 08's machinery: the authors' own per-row SBERT evaluation logs as evidence.

The logs (``benchmark_new/summary_eval/eval_logs_*`` of the authors' repository, pinned commit) are read from a
local folder or downloaded file by file and checked by git blob sha1 (``sources``), parsed with our own parser and
verified against their footers and the summary CSVs that cite them (``logs``), joined to OP-V2 by prompt
(``evidence``) and turned into every logged cell with a bootstrap CI and the paired headline claims (``claims``);
the logged candidate sentences are re-scored under evaluators the authors did not use (``rescore``: greedy
one-to-one matching at a threshold, the authors' reference splitting); ``compare`` puts a user's outputs beside
every authors' system (``opgrpo compare``). The step itself is ``opgrpo_lib.steps.authors``. This file imports
nothing, so a step's key covers only the modules it uses.
"""
