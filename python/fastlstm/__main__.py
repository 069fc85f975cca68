"""python -m fastlstm: the command line (see fastlstm.cli)."""
from .cli import main

raise SystemExit(main())
