"""Demo cohort: real chest CT anatomy, APPROXIMATE lobes and synthetic lesions with known truth."""
