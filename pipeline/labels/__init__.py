"""The label vocabulary: class tables, id spaces, the networks' label channels, label-map files."""
