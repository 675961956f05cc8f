"""Contention: how much slower a MedTorch job runs beside an equal job on the same cores.

``python -m benchmarks.contention [--quick]`` runs each workload (``medtorch denoise --method
selfsup`` on a crop of the MNI template, and a rigid ``medtorch register`` of that crop to a
rotated and shifted copy) through the ``medtorch`` command line in a fresh process:

* alone, then two equal processes at once (the machine's cores shared by two jobs);
* with the old behaviour (``MEDTORCH_THREADS=torch``: torch's default thread count and
  OpenMP's default wait policy, which spins) and with the runtime's thread policy
  (:mod:`medtorch.runtime.threads`: threads from the free CPUs, ``OMP_WAIT_POLICY=PASSIVE``).

The figure is the slowdown, the mean wall time of the two jobs run together over the time
of one alone; the target is at most 2.5 (two jobs on the same cores cannot do better than
2 each when one alone already uses them all). The table goes to ``docs/benchmarks/contention.md``
with the machine, its load before each run, and the threads each job ran with. Timings need
an otherwise idle machine: the load average is printed with each figure so that a busy
machine's numbers can be told apart.
"""
