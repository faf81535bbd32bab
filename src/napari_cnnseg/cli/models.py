"""``cnnseg models``: list the shipped models and the architectures with their default configs."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list shipped models and architectures (with default configs)",
        description="List the models shipped with napari-cnnseg (usable as -m NAME) and the "
        "architectures build_model() accepts, with their default configuration.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return p


def _shipped() -> list[dict]:
    from ..core.models.checkpoint import PRETRAINED_DIR, list_pretrained

    out = []
    for name in list_pretrained():
        doc = json.loads((PRETRAINED_DIR / f"{name}.json").read_text(encoding="utf-8"))
        meta = doc.get("meta", {})
        out.append(
            {
                "name": name,
                "arch": doc.get("arch"),
                "class_names": meta.get("class_names"),
                "spacing": meta.get("spacing"),
                "description": meta.get("description", ""),
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    from ..core.models.registry import architecture_names, default_config

    shipped = _shipped()
    archs = {name: default_config(name) for name in architecture_names()}
    if args.json:
        print(json.dumps({"pretrained": shipped, "architectures": archs}, indent=2))
        return 0
    print("Shipped models (use as -m NAME):")
    if not shipped:
        print("  (none installed)")
    for m in shipped:
        classes = ", ".join(m["class_names"] or [])
        print(f"  {m['name']:<24} {m['arch']:<16} classes: {classes}")
        if m["description"]:
            print(f"  {'':<24} {m['description']}")
    print("\nArchitectures (build_model(NAME, **config); defaults shown):")
    for name, cfg in archs.items():
        print(f"  {name}")
        for key, value in cfg.items():
            print(f"    {key} = {json.dumps(value)}")
    return 0
