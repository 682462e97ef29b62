"""The reproduction experiment behind tools/reproduce.py: config, stages, data, report."""
