"""The one error that stops start-up: a setting, certificate, CA, policy or port that cannot be
used. Each module's own configuration error derives from it, so ``__main__`` catches this one
type and prints its message, one line naming the setting and the fix."""


class ConfigError(Exception):
    """A setting is wrong; the message names it and says how to fix it."""
