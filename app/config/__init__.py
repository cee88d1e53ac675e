"""The policy file: models, loader, ``${VAR}`` interpolation and templates."""

from app.config.loader import ConfigError, ConfigIssue, load_policy_file, load_policy_text
from app.config.models import PolicyConfig

__all__ = ["ConfigError", "ConfigIssue", "PolicyConfig", "load_policy_file", "load_policy_text"]
