"""Renders each manifest's support table into its migration guide (python -m ... to refresh)."""

from __future__ import annotations

import sys
from pathlib import Path

from .rules import manifests_dir, read_manifest

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def support_table(manifest: dict[str, object]) -> str:
    """The Markdown table of every module, name and setting string a manifest lists."""
    rows = ["| legacy | capa_compat | status | notes |", "|---|---|---|---|"]
    for module in manifest.get("modules", []):  # type: ignore[attr-defined]
        scope = "whole module" if module.get("whole") else "listed names"
        rows.append(f"| `{module['old']}` | `{module['new']}` | {scope} | |")
        for name, spec in module.get("names", {}).items():
            note = spec.get("note", "").replace("|", "\\|")
            rows.append(
                f"| `{module['old']}.{name}` | `{module['new']}.{name}` | {spec['status']} "
                f"| {note} |"
            )
    for setting in manifest.get("settings", []):  # type: ignore[attr-defined]
        note = setting.get("note", "").replace("|", "\\|")
        rows.append(f"| `\"{setting['old']}\"` | `\"{setting['new']}\"` | setting | {note} |")
    return "\n".join([START, *rows, END])


def guide_path(manifest: dict[str, object], root: Path) -> Path:
    return root / str(manifest.get("guide") or f"migration_guides/{manifest['library']}.md")


def refresh(root: Path) -> list[Path]:
    """Rewrite the tables of every guide from its manifest; return the guides that changed."""
    changed = []
    for file in sorted(manifests_dir().glob("*.toml")):
        manifest = read_manifest(file)
        guide = guide_path(manifest, root)
        text = guide.read_text(encoding="utf-8")
        if START not in text:
            raise SystemExit(f"{guide}: add the markers {START} and {END} where the table goes")
        start, end = text.index(START), text.index(END) + len(END)
        new = text[:start] + support_table(manifest) + text[end:]
        if new != text:
            guide.write_text(new, encoding="utf-8")
            changed.append(guide)
    return changed


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path in refresh(root):
        print(f"updated {path}")
