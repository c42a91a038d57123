"""Figures and tables of the report stage, one module per figure family.

Every function here takes data already read (records, arrays, tables) or file
paths, draws with matplotlib's Agg backend and writes a PNG or CSV through
dramseg.io, so an interrupted job leaves no finished-looking file.
"""
