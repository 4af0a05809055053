"""`python -m tests.integration.release_without_schema TYPE COMMAND...`: the bridge as a release that has no
schema for TYPE yet (its contract reads a copy of the packaged schemas without TYPE's), running COMMAND."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridge import cli
from bridge.contract import DATA_DIR, SCHEMA_ROOT, Contract


def main(event_type: str, command: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="schemas-"))
    shutil.copytree(Path(str(SCHEMA_ROOT)), root, dirs_exist_ok=True)
    (root / DATA_DIR / f"{event_type}.json").unlink()
    load = Contract.load.__func__  # type: ignore[attr-defined]

    def without(cls: type[Contract], _root: Any = None) -> Contract:
        return load(cls, root)  # type: ignore[no-any-return]

    Contract.load = classmethod(without)  # type: ignore[assignment,method-assign]
    cli.main(command)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
