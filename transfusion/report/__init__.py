"""Tables, figures and report.md, built only from run folders and results files."""
