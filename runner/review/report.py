"""The config review as Markdown for a pull-request comment (grouped, long parts collapsed); JSON is the dict."""

from collections import defaultdict

MAX_KEYS_SHOWN = 40


def _v(value) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return "`" + text.replace("`", "'").replace("|", "\\|")[:80] + "`"


def _usd(value) -> str:
    return "n/a" if value is None else f"${value:.2f}/h"


def _azure_lines(a: dict) -> list[str]:
    before, after = a["before"] or {}, a["after"] or {}
    lines = []
    for key, label in (("cluster", "cluster"), ("job", "job"), ("endpoint", "endpoint")):
        if before.get(key) != after.get(key):
            lines.append(f"- {label}: {before.get(key, 'none')} -> {after.get(key, 'none')}")
    for key, label in (("train_usd_per_hour", "training"), ("serve_usd_per_hour", "serving")):
        old, new = before.get(key), after.get(key)
        if old != new:
            delta = f" ({new - old:+.2f} $/h)" if old is not None and new is not None else ""
            lines.append(f"- {label}: {_usd(old)} -> {_usd(new)}{delta}")
    return lines


def markdown(r: dict) -> str:
    s = r["summary"]
    combos = r["combinations"]
    base = (
        r["base"]["commit"][:10]
        if r["base"]["ref"] == r["base"]["commit"]
        else f"{r['base']['ref']}` ({r['base']['commit'][:10]})`"
    )
    out = [
        f"## Config review: `{base}` -> {r['head']}".replace("``", ""),
        "",
        f"**{s['changed']} of {len(combos)} combinations change**, {s['invalid']} fail validation, "
        f"{s['new']} new, {s['removed']} removed, {s['unchanged']} unchanged. Costs: {r['prices']} (approximate).",
        "",
    ]
    invalid = [c for c in combos if c["status"] == "invalid"]
    if invalid:
        out += ["### Fail validation (the review exits 2)", ""]
        for c in invalid:
            when = {True: "stopped validating", False: "still invalid", None: "new"}[c.get("was_valid")]
            out.append(f"- `{c['name']}`{' (' + when + ')' if when else ''}:")
            out += [f"  - {p.strip().lstrip('- ')}" for p in c["problems"] if not p.endswith("is invalid:")]
        out.append("")
    added, removed = r["options"]["added"], r["options"]["removed"]
    if added or removed:
        out += ["### Options", ""]
        out += [f"- new: `{g}={o}`" for g, opts in added.items() for o in opts]
        out += [f"- removed: `{g}={o}`" for g, opts in removed.items() for o in opts]
        new = [c["name"] for c in combos if c["status"] == "new"]
        if new:
            out.append(f"- {len(new)} new combination(s): " + ", ".join(f"`{n}`" for n in new))
        out.append("")
    changed = [c for c in combos if c["status"] == "changed"]
    if changed:
        out += ["### Changed", ""]
        groups = defaultdict(list)  # combinations that change the same way are shown once
        for c in changed:
            key = (
                tuple((x["key"], repr(x["old"]), repr(x["new"])) for x in c["changes"]),
                c["verdict"],
                tuple(c["redo"]),
                tuple(_azure_lines(c["azure"])) if c.get("azure") else (),
            )
            groups[key].append(c)
        for (_, verdict, redo, azure), members in groups.items():
            names = ", ".join(f"`{m['name']}`" for m in members)
            first = members[0]
            out += [
                f"<details><summary>{len(members)} combination(s) {verdict} ({', '.join(redo) or 'no stage'}): "
                f"{len(first['changes'])} key(s){'; Azure resources change' if azure else ''}</summary>",
                "",
                names,
                "",
                "| key | base | working tree |",
                "|---|---|---|",
            ]
            out += [f"| `{x['key']}` | {_v(x['old'])} | {_v(x['new'])} |" for x in first["changes"][:MAX_KEYS_SHOWN]]
            if len(first["changes"]) > MAX_KEYS_SHOWN:
                out.append(f"| ... | {len(first['changes']) - MAX_KEYS_SHOWN} more | |")
            if azure:
                out += ["", "Azure:", *azure]
            out += ["", "</details>", ""]
    if s["unchanged"]:
        out.append(f"{s['unchanged']} combination(s) unchanged.")
    return "\n".join(out).rstrip() + "\n"


def validation(head: dict) -> tuple[str, bool]:
    """For --validate-only (the pre-commit hook): one line per invalid combination, or that all are valid."""
    bad = {name: r["problems"] for name, r in head.items() if r["problems"]}
    if not bad:
        return f"all {len(head)} combinations of the config groups compose and validate", False
    lines = [f"{len(bad)} of {len(head)} combinations do not validate:"]
    for name, found in bad.items():
        lines += [f"  {name}:"] + [f"    {p.strip()}" for p in found if not p.endswith("is invalid:")]
    return "\n".join(lines), True
