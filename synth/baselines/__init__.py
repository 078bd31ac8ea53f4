"""The paper's baselines beside RESAIL: CLADE and CLADE-ICPE norms, their inputs (SPADE's instance edge
map, CLADE's intra-class positional maps) and `resail model import` for the generators SPADE, CLADE
and the official RESAIL code released (docs/baselines.md)."""
