"""Thin command-line jobs over ``pipeline.run_pipeline``: ``python jobs/summarize.py --help``.

They parse arguments and YAML, join Ray and turn the run report into an exit status; the logic lives in the pipeline.
"""

__all__: list[str] = []
