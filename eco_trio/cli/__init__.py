"""The command line: the only place that reads argv, the environment and
stdio, and calls ``trio.run``."""
