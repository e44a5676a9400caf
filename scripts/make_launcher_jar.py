"""Write a launcher jar: no classes, a manifest whose Class-Path names every jar in a folder.

``java -jar launcher.jar`` then runs ``Main-Class`` with those jars, like a shaded jar would.
Class-Path entries are resolved relative to the launcher's folder.

    python scripts/make_launcher_jar.py OUT.jar MAIN_CLASS LIB_DIR
"""

import sys
import zipfile
from pathlib import Path


def manifest_line(text: str) -> str:
    # the manifest format allows 72 bytes per line; continuation lines start with one space
    raw = text.encode()
    parts = [raw[:72]] + [raw[i : i + 71] for i in range(72, len(raw), 71)]
    return "\r\n ".join(p.decode() for p in parts) + "\r\n"


def main() -> None:
    out, main_class, lib = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    jars = sorted(p for p in lib.glob("*.jar"))
    if not jars:
        sys.exit(f"no jars in {lib}")
    rel = [p.resolve().relative_to(out.resolve().parent).as_posix() for p in jars]
    manifest = (
        manifest_line("Manifest-Version: 1.0")
        + manifest_line(f"Main-Class: {main_class}")
        + manifest_line("Class-Path: " + " ".join(rel))
        + "\r\n"
    )
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", manifest)
    tmp.replace(out)
    print(f"{out}: {len(jars)} jars, Main-Class {main_class}")


if __name__ == "__main__":
    main()
