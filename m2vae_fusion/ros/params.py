"""Declaring a node's parameters from a table (name, default, description), with descriptions for
``ros2 param describe`` and forgiving number types: a YAML ``30`` is accepted where ``30.0`` is meant.

A YAML empty list (``[]``) leaves a parameter without a value in this ROS release; such a parameter reads as ``[]``.
"""
from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.parameter import Parameter

from m2vae_fusion.errors import UserError


class ConfigError(UserError):
    """A parameter value the node cannot work with (the message names the parameter)."""


def _floats(default) -> bool:
    return isinstance(default, float) or (isinstance(default, list) and bool(default)
                                          and all(isinstance(v, float) for v in default))


def _declare(node, name, default, desc):
    if isinstance(default, Parameter.Type):  # typed, no default value
        node.declare_parameter(name, default, ParameterDescriptor(description=desc))
    else:
        node.declare_parameter(name, default, ParameterDescriptor(description=desc, dynamic_typing=_floats(default)))
    return _read(node, name, default)


def coerce(name: str, default, value):
    """``value`` of parameter ``name`` in the type of its ``default`` (a YAML ``30`` where ``30.0`` is meant;
    None → ``[]`` for lists).

    Raises:
        ConfigError: a value that is not a number where a number is required (names the parameter).
    """
    if value is None:
        return []
    try:
        if isinstance(default, float):
            return float(value)
        if _floats(default):
            return [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name} must be a number (or a list of numbers), got {value!r}") from None
    if isinstance(default, (list, Parameter.Type)):
        return list(value)
    return value


def _read(node, name, default):
    try:
        value = node.get_parameter(name).value
    except Exception:  # uninitialised: YAML [] leaves a parameter without a value
        return []
    return coerce(name, default, value)


def declare_parameters(node, table) -> dict:
    """Declare every ``(name, default, description)`` of ``table`` on ``node``; returns ``{name: value}``.

    ``default`` may be a ``rclpy.parameter.Parameter.Type`` for a typed parameter without default (reads as ``[]``
    when unset).

    Raises:
        ConfigError: a value of the wrong type in a parameter file or on the command line (names the parameter).
    """
    out = {}
    for name, default, desc in table:
        try:
            out[name] = _declare(node, name, default, desc)
        except ConfigError:
            raise
        except Exception as exc:  # rclpy's type errors
            raise ConfigError(f"parameter {name}: {exc}") from None
    return out


def read_parameters(node, table) -> dict:
    """The current values ``{name: value}`` of the parameters of ``table`` (declared before), typed as declared.

    Raises:
        ConfigError: a value of the wrong type (names the parameter).
    """
    return {name: _read(node, name, default) for name, default, _ in table}
