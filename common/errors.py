"""One clear line for bad input: raise UserError("what is wrong — what to do") and wrap main() in run_main."""
import sys


class UserError(Exception):
    """Bad input the user can fix (missing file, wrong vocab, unknown column, invalid config)."""


def run_main(main, *args, **kwargs):
    """Run a stage's main(); a UserError becomes one 'error: …' line on stderr and exit code 2."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
