"""Lobe names, the internal label order and the label conventions of lobe segmenters."""

# Internal order, used by every file after the lobe lookup: label = index + 1.
# It is the DIAG convention (Xie et al.'s relational lobe segmenter).
LOBE_NAMES: tuple[str, ...] = ("lul", "lll", "rul", "rll", "rml")
LOBE_LABELS: dict[str, int] = {name: index + 1 for index, name in enumerate(LOBE_NAMES)}
LOBE_TITLES: dict[str, str] = {
    "lul": "left upper lobe",
    "lll": "left lower lobe",
    "rul": "right upper lobe",
    "rll": "right lower lobe",
    "rml": "right middle lobe",
}
# Order of the score columns in cohort tables and of the paper's tables.
SCORE_ORDER: tuple[str, ...] = ("lul", "lll", "rul", "rml", "rll")
LEFT_LOBES = frozenset({"lul", "lll"})
RIGHT_LOBES = frozenset({"rul", "rml", "rll"})

# Label value of each lobe in the maps written by known lobe segmenters.
CONVENTIONS: dict[str, dict[str, int]] = {
    "diag": {"lul": 1, "lll": 2, "rul": 3, "rll": 4, "rml": 5},
    "lungmask": {"lul": 1, "lll": 2, "rul": 3, "rml": 4, "rll": 5},
    "totalsegmentator": {"lul": 10, "lll": 11, "rul": 12, "rml": 13, "rll": 14},
    "totalsegmentator_v1": {"lul": 13, "lll": 14, "rul": 15, "rml": 16, "rll": 17},
}

# Reference lesion subtypes.
SUBTYPES: dict[int, str] = {1: "ggo", 2: "consolidation", 3: "mixed"}
