"""The life of a run's processes (the ground layer: imports nothing else of ours).

``launcher`` (``scaleout train --accelerate-config``: lock, start torchrun, forward signals, wait),
``torchrun`` (the quiet torchrun it starts), ``worker`` (signals, parent watch and one-line errors in
each worker), ``lock`` (one run per out_dir), ``status`` (what both sides share), ``exit_codes``,
``process_group`` (no process exits with a live process group).
"""
