"""Flag parsing for the tools in tools/, each with its own absl FlagValues."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags


def tool_flags_parser(flag_values: flags.FlagValues, doc: str) -> Callable[[list[str]], list[str]]:
    """An `app.run(..., flags_parser=)` for a tool's own `flag_values`: `--help` prints `doc`
    and the tool's flags; a bad flag, or a --config.KEY override naming no key, is one line."""

    def parse(argv: list[str]) -> list[str]:
        if {"-h", "--help", "--helpfull"} & set(argv):
            print(doc + "\n" + flag_values.get_help())
            sys.exit(0)
        try:
            rest = flag_values(argv)
        except (AttributeError, KeyError) as error:  # a --config.KEY override naming no key
            sys.exit(f"error: a --config.* override names no config key ({error}).")
        except flags.Error as error:
            sys.exit(f"error: {error}")
        flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults
        return rest

    return parse
