"""What may be printed, kept in a run directory or logged: the one place that hides secrets and workspace ids.

- the spec: values from environment variables become '<from $VAR>', secret-looking keys '<redacted>' (spec.yaml,
  the config review, the Azure resource files);
- command lines: azure.* override values hidden (the lock file, what the runner prints), or left out (a sweep's
  point names and commands: they belong in the shell);
- Azure's own text: subscription and tenant ids scrubbed from errors, Studio links and streamed job logs.
"""

import re

SECRET_KEY = re.compile(r"(key|secret|token|password|credential)", re.I)
NOT_SECRET = {"model.pad_token"}  # spec keys that match SECRET_KEY but name a vocabulary token


def _azure(override: str) -> bool:
    """An override of azure.* (a subscription id, a resource group): its value stays in the shell."""
    return override.split("=", 1)[0].lstrip("+~").startswith("azure.")


def redacted(spec: dict, env_paths: dict, fill_missing: bool = False) -> dict:
    """A copy safe to write and review: environment values become '<from $VAR>', secret-looking keys '<redacted>'.

    env_paths: {'azure.subscription_id': 'AZURE_SUBSCRIPTION_ID', ...}. An unset one stays null, or shows the
    placeholder too with fill_missing (resource files need a string there even when plan mode runs without it).
    """

    def walk(node, prefix):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                path = f"{prefix}{k}"
                if path in env_paths:
                    out[k] = None if v is None and not fill_missing else f"<from ${env_paths[path]}>"
                elif SECRET_KEY.search(str(k)) and isinstance(v, str) and v and path not in NOT_SECRET:
                    out[k] = "<redacted>"
                else:
                    out[k] = walk(v, path + ".")
            return out
        if isinstance(node, list):
            return [walk(v, prefix) for v in node]
        return node

    return walk(spec, "")


def command_shown(argv) -> str:
    """The command as it may be printed and kept in a run directory: azure.* values (a subscription id) hidden."""
    import shlex

    args = [f"{o.split('=', 1)[0]}=<hidden>" if "=" in o and _azure(o) else o for o in argv]
    return " ".join(["python -m runner", *map(shlex.quote, args)])


def shown(overrides) -> list[str]:
    """The overrides that may be printed and kept: azure.* values (a subscription id) belong in the shell only."""
    return [o for o in overrides if not _azure(o)]


_IDS = re.compile(
    r"(https://ml\.azure\.com/[^\s?'\"]*)\?[^\s'\"]*|(/subscriptions/)[^/\s'\"]+|(\btid=)[^&\s'\"]+", re.I
)


def scrub(text: str) -> str:
    """Text from Azure without the subscription and tenant ids: Studio links lose their query, ARM paths their id."""

    def repl(m):
        if m.group(1):
            return m.group(1)
        return m.group(2) + "<subscription>" if m.group(2) else m.group(3) + "<tenant>"

    return _IDS.sub(repl, str(text))


class ScrubbedStream:
    """A stdout that scrubs what passes through: azure-ai-ml prints the job's Studio link while streaming."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.stream.write(scrub(text))

    def flush(self):
        self.stream.flush()
