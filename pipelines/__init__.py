"""pipelines: the stages, one module each with `run(cfg) -> outputs` (extract, fit_heads,
import_heads, index, score, locate, check, simulate), and the shells that run them: the CLI
(`cli.py`, a thin typer layer) and the demo. A stage imports the library's wings through their
faces and no other stage; what stages share lives in the library (docs/ARCHITECTURE.md).
"""
