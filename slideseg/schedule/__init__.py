"""Scheduling: one Dask task per output chunk (or shard) reads its haloed window, runs its tiles
through the engine and writes exactly that chunk; where the tasks run (threads, processes, a
cluster, SLURM/PBS).
"""
