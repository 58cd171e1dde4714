"""Measure and explain: parameter/MAdds profiles and the papers' analyses."""
