"""The ground floor: what every job and transform shares, importing nothing of theirs.

The vocabulary of a snapshot (`model`), typed errors (`errors`), the archive reader and writer
(`archive`, `validate`), the search-server client (`search`) and what a live manager is
(`manager`), the snapshot store (`store`), the restore journal (`journal`), digests, Beam
counters and options, progress reporting.
"""
