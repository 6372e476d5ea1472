"""``lwfm-bus trigger add | ls | rm``: register triggers from a file, list them, cancel one."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._client import connect
from .._config import BusConfig
from .._errors import ConfigError, TriggerError
from .._index._projection import TriggerRecord
from .._limits import load_json_bounded, load_toml_bounded, read_text_bounded
from .._triggers import Trigger, trigger_adapter
from ._print import shown


def register(sub: Any) -> None:
    t = sub.add_parser("trigger", help="register, list and cancel triggers")
    tsub = t.add_subparsers(dest="trigger_command", required=True, metavar="ACTION")
    a = tsub.add_parser("add", help="register triggers from a JSON or TOML file (schemas/files/trigger.json)")
    a.add_argument("file", type=Path, help="one trigger, or a list of them ('-' reads JSON from stdin)")
    a.set_defaults(func=add)
    ls = tsub.add_parser("ls", help="list triggers")
    ls.add_argument("--workflow", help="only this workflow's")
    ls.add_argument("--state", choices=("active", "fired", "expired", "failed", "cancelled"))
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=list_triggers)
    rm = tsub.add_parser("rm", help="cancel a trigger")
    rm.add_argument("trigger", help="trigger id")
    rm.add_argument("--reason", help="why (kept in the event)")
    rm.set_defaults(func=remove)


def load_trigger_file(path: Path) -> list[Trigger]:
    """Triggers from a file, validated whole: one bad entry rejects the file, naming the field."""
    where = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = read_text_bounded(sys.stdin if where == "<stdin>" else path, where)
        doc: Any = load_toml_bounded(text, where) if path.suffix == ".toml" else load_json_bounded(text, where)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    except ValueError as exc:  # too large, too deep, not UTF-8
        raise ConfigError(str(exc)) from None
    if isinstance(doc, dict) and "triggers" in doc and "kind" not in doc:
        doc = doc["triggers"]
    items = doc if isinstance(doc, list) else [doc]
    out = []
    for n, item in enumerate(items):
        try:
            out.append(trigger_adapter().validate_python(item))
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            prefix = f"triggers[{n}]." if len(items) > 1 else ""
            raise TriggerError(f"{where}: {prefix}{loc}: {err['msg']}") from None
    return out


async def add(args: argparse.Namespace, config: BusConfig) -> int:
    triggers = load_trigger_file(args.file)
    async with connect(config, name="lwfm-bus trigger") as bus:
        for trigger in triggers:
            await bus.add_trigger(trigger)
            print(shown(trigger.trigger_id))
    return 0


def _row(r: TriggerRecord) -> str:
    ident, kind, state, last = (shown(v) for v in (r.trigger_id, r.kind, r.state, r.last_job_id or "-"))
    return f"{ident:<34} {kind:<11} {state:<10} {r.fired:>5}  {last:<34} {shown(r.name or '')}"


async def list_triggers(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus trigger") as bus:
        records = await bus.triggers(workflow=args.workflow, state=args.state)
    if args.json:
        for r in records:
            print(
                json.dumps(
                    {
                        "trigger_id": r.trigger_id,
                        "kind": r.kind,
                        "name": r.name,
                        "workflow_id": r.workflow_id,
                        "state": r.state,
                        "fired": r.fired,
                        "last_job_id": r.last_job_id,
                        "reason": r.reason,
                        "registered_at": r.registered_at.isoformat(),
                        "definition": r.definition.model_dump(mode="json"),
                    }
                )
            )
        return 0
    print(f"{'TRIGGER':<34} {'KIND':<11} {'STATE':<10} {'FIRED':>5}  {'LAST JOB':<34} NAME")
    for r in records:
        print(_row(r))
    return 0


async def remove(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus trigger") as bus:
        await bus.cancel_trigger(args.trigger, reason=args.reason)
    return 0
